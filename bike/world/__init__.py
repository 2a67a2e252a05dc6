"""ToyKinetics, the miniature video world: the embedded default dataset and a tiny pretrained CLIP.

Every experiment family of bikebench runs on it on a laptop CPU with nothing downloaded:

* ``bike.world.config``     the vocabulary (colours, shapes, motions) and the size presets;
* ``bike.world.render``     vectorised numpy rendering of frames with motion trails;
* ``bike.world.generator``  videos (an action in a random window, distractors), class splits;
* ``bike.world.dataset``    the files on disk, in the real datasets' list formats;
* ``bike.world.snapshots``, ``bike.world.captions``, ``bike.world.pretrain``  the tiny CLIP's
  contrastive pretraining on frame–caption pairs;
* ``bike.world.measure``    zero-shot / linear-probe accuracy of the tiny CLIP;
* ``bike.world.build``      ``build_world(root, size, seed) -> WorldInfo`` (idempotent, manifest last).

``python -m bike.world build --root DIR --size default|test --seed N`` builds one.
"""

from bike.world.build import WorldError, WorldInfo, build_world, default_root, load_world
from bike.world.config import SIZES, WorldConfig, world_config

__all__ = ["SIZES", "WorldConfig", "WorldError", "WorldInfo", "build_world", "default_root", "load_world", "world_config"]
