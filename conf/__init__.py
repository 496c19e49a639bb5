"""Hydra configuration files, shipped as package data so a plain wheel install finds them."""
