// Stands in for the CUDA header when the kernels are compiled for the CPU (tests/cuda/emu).
#pragma once
#include "emu_half_types.h"
