"""Image and identity metrics shared by the evaluate and bias stages (IQA, identity, landmarks, Frechet distances)."""
