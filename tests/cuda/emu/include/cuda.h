// Stands in for the CUDA header when the kernels are compiled for the CPU (tests/cuda/emu): the
// tensor map type the sm_90a kernels take as a parameter (its 128 bytes are the stand-in
// libcuda's encoding, which the emulator's TMA reads).
#pragma once
#include <stdint.h>
typedef struct alignas(64) CUtensorMap_st {
  uint64_t opaque[16];
} CUtensorMap;
