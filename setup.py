"""Maps the repository's top-level folders into the one import package ``tessera``.

The folder ``operator/`` must never be importable as a top-level ``operator`` (it
would shadow the standard library's module), so every folder is installed under
``tessera.<name>`` and nothing at the repository root is a package.
"""

from setuptools import find_namespace_packages, setup

FOLDERS = ["api", "cli", "planner", "workers", "operator", "sim", "examples"]

package_dir = {f"tessera.{folder}": folder for folder in FOLDERS}
packages = []
for folder in FOLDERS:
    packages.append(f"tessera.{folder}")
    # Namespace packages too: the data folders (scenarios, corpus, inventory...) hold no __init__.py.
    packages += [f"tessera.{folder}.{sub}" for sub in find_namespace_packages(where=folder, exclude=["*__pycache__*"])]

setup(
    package_dir=package_dir,
    packages=packages,
    package_data={f"tessera.{folder}": ["**/*.yaml", "**/*.json", "**/*.sql", "**/*.txt", "**/*.pt"] for folder in FOLDERS},
)
