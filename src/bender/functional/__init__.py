"""Autograd primitives with a bent backward pass: similarities, STE activations, DFA loss;
and the sign-concordant feedback matrices that the sign-symmetry mappings pass to them."""

from bender.functional.conv import conv, conv_asym_dx, conv_blocked_dx, conv_kp_dx
from bender.functional.dense import matmul, matmul_asym_dx, matmul_blocked_dx, matmul_kp_dx
from bender.functional.direct_feedback import direct_feedback_loss
from bender.functional.radial import radial_sim, radial_sim_asym
from bender.functional.sign_concordant import random_magnitudes, sign_concordant
from bender.functional.ste import hard_sigmoid, hardtanh_adaste, sign_ste, stoc_sign_ste

__all__ = [
    "conv",
    "conv_asym_dx",
    "conv_blocked_dx",
    "conv_kp_dx",
    "direct_feedback_loss",
    "hard_sigmoid",
    "hardtanh_adaste",
    "matmul",
    "matmul_asym_dx",
    "matmul_blocked_dx",
    "matmul_kp_dx",
    "radial_sim",
    "radial_sim_asym",
    "random_magnitudes",
    "sign_concordant",
    "sign_ste",
    "stoc_sign_ste",
]
