"""Synthetic person re-identification data in the Market-1501 and DukeMTMC-reID layouts (an application:
the data of the demo, the study preset and the tests).

No real ReID dataset can be downloaded in this project, so this module renders simple pedestrian-like
crops with OpenCV and writes them with exactly the folder structure and file names of the real
datasets; the real dataset parsers read them unchanged. The structure matters, not the pixels:

* an **identity** is a fixed set of appearance attributes (:class:`PersonAttributes`) kept across
  cameras. Attributes come from small palettes, so several identities share each cue and a model
  must combine cues to tell people apart;
* a **camera** (:class:`Camera`) changes how an identity looks: illumination, colour cast, blur,
  noise, background, its usual viewpoint and how often people are occluded. Every image adds its
  own jitter on top (pose, scale, position, occluders, lighting);
* a **domain** (:class:`DomainStyle`) is the distribution cameras and clothing are drawn from.
  ``market`` and ``duke`` differ systematically (backgrounds, colour casts, occlusion, crop sizes,
  blur, 6 vs 8 cameras) while identities come from the same family of distributions, so features
  transfer only partly, as from Market-1501 to DukeMTMC-reID.

Every random draw is seeded by (seed, style, what, which), so the files are byte-identical for a
seed whatever the number of worker processes.
"""

from reid.experiments.synthetic.domains import (
    DOMAIN_STYLES,
    STYLES,
    SUBSETS,
    Camera,
    DomainStyle,
    PersonAttributes,
    Pose,
    get_style,
    make_cameras,
    sample_identity,
    sample_pose,
)
from reid.experiments.synthetic.generate import MANIFEST_NAME, generate_synthetic, read_manifest
from reid.experiments.synthetic.render import render_distractor, render_junk, render_person

__all__ = [
    "STYLES", "SUBSETS", "MANIFEST_NAME", "DOMAIN_STYLES", "DomainStyle", "PersonAttributes", "Camera",
    "Pose", "get_style", "sample_identity", "make_cameras", "sample_pose", "render_person",
    "render_distractor", "render_junk", "read_manifest", "generate_synthetic",
]
