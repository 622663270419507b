"""Distillation losses: one registry (:data:`LOSSES`), one contract, the term syntax of ``--loss``.

=========  =======  ===================================================================================
name       kind     paper and defaults
=========  =======  ===================================================================================
``ce``     task     cross-entropy / BCE on the labels (per pixel for segmentation; run's smoothing and weights)
``kd``     logit    Hinton et al. 2015; ``T=4``
``dkd``    logit    Zhao et al. 2022; ``alpha=1, beta=8, T=4, warmup=20`` epochs (capped at 1/12 of the run)
``dist``   logit    Huang et al. 2022; ``beta=1, gamma=1, T=1``
``mlkd``   logit    multi-label sigmoid soft targets (BCE); ``T=1``; alias ``bce_kd``
``fitnet`` feature  Romero et al. 2015; 1x1-conv adapter + MSE; ``s=, t=`` layers
``at``     feature  Zagoruyko & Komodakis 2017; ``p=2, beta=1000``
``rkd``    feature  Park et al. 2019; ``distance=25, angle=50``
``pkt``    feature  Passalis & Tefas 2018 (weight 30000 in the CRD benchmark)
``dice``   task     segmentation: soft Dice, Milletari et al. 2016 (MONAI's DiceLoss); ``background=0``
``pixkd``  logit    segmentation: per-pixel KD (Hinton et al. 2015; Liu et al. 2019); ``T=1``
``cwd``    logit    segmentation: channel-wise distillation, Shu et al. 2021 (ICCV); ``tau=4``
=========  =======  ===================================================================================

Example:
    >>> [t.name for t in parse_losses(["ce:1", "kd:0.9,T=4", "fitnet:1,s=layer3,t=layer3"])]
    ['ce', 'kd', 'fitnet']
"""

from edgekd.distill.losses._base import (
    LOSSES,
    DistillLoss,
    FeatureLoss,
    LossBatch,
    LossTerm,
    ModelOutputs,
    list_losses,
    loss_params,
    parse_loss,
    parse_losses,
)
from edgekd.distill.losses._feature import (
    ATLoss,
    FitNetLoss,
    PKTLoss,
    RKDLoss,
    attention_map,
    embedding,
    pkt_div,
    rkd_angle,
    rkd_distance,
)
from edgekd.distill.losses._logit import (
    CELoss,
    DISTLoss,
    DKDLoss,
    KDLoss,
    MLKDLoss,
    dist_div,
    dkd_div,
    dkd_warmup_factor,
    kd_div,
    mlkd_bce,
)
from edgekd.distill.losses._seg import CWDLoss, DiceLoss, PixelKDLoss, cwd_div, pixel_kd_div, soft_dice_loss

__all__ = [
    "LOSSES",
    "DistillLoss",
    "FeatureLoss",
    "LossBatch",
    "LossTerm",
    "ModelOutputs",
    "list_losses",
    "loss_params",
    "parse_loss",
    "parse_losses",
    "CELoss",
    "KDLoss",
    "DKDLoss",
    "DISTLoss",
    "MLKDLoss",
    "FitNetLoss",
    "ATLoss",
    "RKDLoss",
    "PKTLoss",
    "kd_div",
    "dkd_div",
    "dkd_warmup_factor",
    "dist_div",
    "mlkd_bce",
    "attention_map",
    "embedding",
    "rkd_distance",
    "rkd_angle",
    "pkt_div",
    "DiceLoss",
    "PixelKDLoss",
    "CWDLoss",
    "soft_dice_loss",
    "pixel_kd_div",
    "cwd_div",
]
