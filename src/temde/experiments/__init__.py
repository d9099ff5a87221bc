"""Experiments that train several models and compare them with intervals (`temde compare`)."""
