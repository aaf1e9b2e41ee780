"""Sampler variants named by short strings, for the exactness bench and the ablation tables.

A name is tokens joined by `_`: first the rule, `mmps` (moment matching, no messages), `dps` or
`mpdps` (the paper's samplers, `fisher` guidance unless `ref` or `through` follows); then any of
`cgK` (CG iterations, MMPS), `warm` (CG warm-started from the previous solve), `plain` (MMPS without the preconditioner), `aK` (at most K
preconditioner anchors along the prior's spectrum; default 1, isotropic), `msg` (MMPS plus MPDPS's
messages), `sN` (sampler steps), `lanK` (K Langevin corrector steps), `tauX` (corrector step),
`churnX` (EDM S_churn), `infer` (σ inferred). Example: `mmps_cg3_s10_lan1_tau0.2`.
"""

from __future__ import annotations

from typing import Any

from inference.corrector import LangevinCorrector
from inference.guidance import MomentMatching
from inference.guided import GuidedConfig
from sdift_prob.errors import bad_input


def parse_variant(name: str, **fixed: Any) -> GuidedConfig:
    """The `GuidedConfig` a variant name stands for; `fixed` adds settings (e.g. `sigma_y`)."""
    rule, *opts = name.split("_")
    if rule not in ("mmps", "dps", "mpdps"):
        raise bad_input("variant", "a name starting with mmps, dps or mpdps", name)
    kw: dict[str, Any] = {"method": "dps" if rule == "mmps" else rule, "guidance": "mmps" if rule == "mmps" else "fisher"}
    cg, precondition, anchors, lan, tau, warm = 3, True, 1, 0, 0.1, False
    for opt in opts:
        if opt == "fisher":
            kw["guidance"] = "fisher"
        elif opt == "ref":
            kw.update(guidance="reference", zeta_schedule="harmonic")
        elif opt == "through":
            kw["through_denoiser"] = True
        elif opt == "plain":
            precondition = False
        elif opt == "warm":
            warm = True
        elif opt == "msg":
            kw["method"] = "mpdps"
        elif opt.startswith("cg"):
            cg = int(opt[2:])
        elif opt.startswith("a") and opt[1:].isdigit():
            anchors = int(opt[1:])
        elif opt.startswith("lan"):
            lan = int(opt[3:])
        elif opt.startswith("tau"):
            tau = float(opt[3:])
        elif opt.startswith("churn"):
            kw["churn"] = float(opt[5:])
        elif opt == "infer":
            kw.update(infer_sigma=True, sigma_y=None)
        elif opt.startswith("s") and opt[1:].isdigit():
            kw["num_steps"] = int(opt[1:])
        else:
            raise bad_input("variant", "tokens fisher, ref, through, plain, warm, msg, infer, cgK, aK, sN, lanK, tauX, churnX", opt)
    if kw["guidance"] == "mmps":
        kw["guidance"] = MomentMatching(cg_steps=cg, precondition=precondition, anchors=anchors, warm_start=warm)
    if lan:
        kw["corrector"] = LangevinCorrector(steps=lan, tau=tau)
    return GuidedConfig(**{**kw, **fixed})


def sampler_name(config: GuidedConfig) -> str:
    """The `reconstruct(sampler=...)` name that goes with a variant's config."""
    return "mmps" if isinstance(config.guidance, MomentMatching) else config.method
