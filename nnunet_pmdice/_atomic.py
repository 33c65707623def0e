"""Former home of the atomic writes: now :mod:`nnunet_pmdice.fileio` (re-exported here until imports switch)."""
from .fileio import PathLike, building_folder, json_ready, read_json, staged_folder, write_json, write_text  # noqa: F401

__all__ = ["PathLike", "building_folder", "json_ready", "read_json", "staged_folder", "write_json", "write_text"]
