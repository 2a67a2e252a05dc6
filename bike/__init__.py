"""BIKE: Bidirectional Cross-Modal Knowledge Exploration for video recognition (CVPR 2023).

The method and its engine. Imports torch, open_clip and decord; never mlflow, optuna or submitit.
"""

__version__ = "0.1.0"
