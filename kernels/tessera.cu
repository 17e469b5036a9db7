// The one translation unit compiled into Tessera's fatbin: every kernel family.
#include "embedding.cu"
#include "transform.cu"
#include "gemm.cu"
#include "attention.cu"
#include "norm.cu"
#include "elementwise.cu"
#include "rope_kv.cu"
#include "sampling.cu"
