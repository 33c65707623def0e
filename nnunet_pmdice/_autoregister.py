"""Makes nnU-Net find the plugin's trainers with no set-up.

nnU-Net (>= 2.8.0) looks for trainers it does not ship in the folders listed in the environment
variable ``nnUNet_extTrainer``. The wheel installs ``nnunet_pmdice_trainers.pth`` into
site-packages; Python runs its one line at every interpreter start in that environment, and it
imports this module, which appends the plugin's ``ext`` folder to the variable (keeping whatever the
user put there first). Every process that runs ``nnUNetv2_train`` / ``nnUNetv2_predict`` / the
predictor API / a DDP child therefore sees the folder, on any machine where the package is installed.

The folder holds one module that only re-exports :mod:`nnunet_pmdice.trainers`, so the classes keep
their real home module and pickle. Set ``NNUNET_PMDICE_NO_AUTOREGISTER=1`` to switch this off and
manage ``nnUNet_extTrainer`` yourself (``nnunet-pmdice ext-path`` prints the folder).
This module must stay tiny and must never raise: it runs at interpreter start-up.
"""
import os

EXT_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext")


def register(environ=os.environ) -> bool:
    """Appends :data:`EXT_FOLDER` to ``nnUNet_extTrainer`` unless it is listed already. Returns True if added."""
    parts = [p for p in environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p.strip()]
    norm = os.path.normcase(os.path.realpath(EXT_FOLDER))
    if any(os.path.normcase(os.path.realpath(p)) == norm for p in parts):
        return False
    environ["nnUNet_extTrainer"] = os.pathsep.join(parts + [EXT_FOLDER])
    return True


try:
    register()
except Exception:  # pragma: no cover - never break interpreter start-up
    pass
