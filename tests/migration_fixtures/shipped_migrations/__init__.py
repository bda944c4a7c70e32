"""Migrations shipped inside a package, found through importlib.resources."""
