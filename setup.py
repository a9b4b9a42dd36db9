"""Maps the top-level folders to import names that do not shadow the standard library
(operator/ -> rlaif.operator); everything else lives in pyproject.toml."""

from setuptools import find_packages, setup

FOLDERS = {"rlaif": "rlaif", "rlaif.operator": "operator", "rlaif.trainer": "trainer",
           "rlaif.rewards": "rewards"}

packages = []
for package, folder in FOLDERS.items():
    packages += [package] + [f"{package}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=FOLDERS, package_data={"": ["*.yaml", "*.json"]})
