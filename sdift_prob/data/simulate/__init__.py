"""Simulators of physical fields, each returning a field collection (see `sdift_prob.data.fields`).

- `simulate_ocean`: ocean sound speed (lat x lon x depth) from TEOS-10 (`gsw`).
- `simulate_fluid2d`: 2D Kolmogorov-flow vorticity (`exponax`).
- `simulate_field3d`: 3D Gray-Scott reaction-diffusion (`exponax`).
"""

from .field3d import simulate_field3d as simulate_field3d
from .fluid2d import simulate_fluid2d as simulate_fluid2d
from .ocean import simulate_ocean as simulate_ocean
from .ocean import sound_speed_teos10 as sound_speed_teos10

SIMULATORS = {
    "ocean": simulate_ocean,
    "fluid2d": simulate_fluid2d,
    "field3d": simulate_field3d,
}
