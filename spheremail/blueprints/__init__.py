"""Thin views, one module per feature; see BLUEPRINT_MODULES in spheremail/__init__.py."""
