"""Face geometry: dlib landmarks, the FFHQ alignment template, warps and paste-back, and the dlib chip frame."""
