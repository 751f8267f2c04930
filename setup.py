"""Maps the design card's folders (daemon/, gui/, shared/) to unambiguous import names.

PyPI's python-daemon owns the import name ``daemon``, so the folders install as
``switchman_daemon``, ``switchman_gui`` and ``switchman_shared``.
"""

from setuptools import find_packages, setup

FOLDERS = {"switchman_daemon": "daemon", "switchman_gui": "gui", "switchman_shared": "shared"}

packages: list[str] = []
package_dir: dict[str, str] = {}
for name, folder in FOLDERS.items():
    packages.append(name)
    package_dir[name] = folder
    for sub in find_packages(folder):
        packages.append(f"{name}.{sub}")

setup(packages=packages, package_dir=package_dir)
