"""Design points: where the teachers are evaluated for the student to see them (mathematics §9).

The teachers need no labels, so the design may reach anywhere: between the
data, around them and beyond them (:mod:`pyro_dlf.design.tabular`), or
label-free image augmentations (:mod:`pyro_dlf.design.images`).
"""

from pyro_dlf.design.choice import DESIGN_CANDIDATES, EVALUATION_REACH, FAMILIES, DesignChoice, choose_design, design_points, held_out_score
from pyro_dlf.design.images import IMAGE_FAMILIES, SHIFT_FAMILIES, augment_images, augmentation_magnitudes
from pyro_dlf.design.sets import DESIGNS, build_design
from pyro_dlf.design.tabular import gaussian_perturbation, mixup, neighbour_jitter, outward_probes, scott_bandwidth

__all__ = ["DESIGNS", "build_design", "DESIGN_CANDIDATES", "EVALUATION_REACH", "FAMILIES", "DesignChoice", "choose_design",
           "design_points", "held_out_score", "IMAGE_FAMILIES", "SHIFT_FAMILIES", "augment_images", "augmentation_magnitudes", "gaussian_perturbation", "mixup", "neighbour_jitter", "outward_probes",
           "scott_bandwidth"]
