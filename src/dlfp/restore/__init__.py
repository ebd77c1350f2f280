"""Test-set restoration (stage `restore`) and the restorer registry."""
