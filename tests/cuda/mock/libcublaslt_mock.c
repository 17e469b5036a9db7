/* A stand-in for libcublasLt.so with the entry points the cuBLASLt bridge binds, for testing it on
 * machines without a GPU. Descriptors and layouts are small structs recording what was set;
 * the heuristic hands out tagged algorithms; cublasLtMatmul computes the product in float on host
 * memory ("device" pointers are host addresses, as in libcuda_mock.c), honoring the layouts,
 * transposes, data types and alpha/beta, and refuses what the real library would (mismatched
 * shapes, unsupported type pairs, zero sizes, a leading dimension below the row count). The test
 * reads what the last call saw through mock_lt_last and can make a named call fail once. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef int cublasStatus_t;
enum { ST_OK = 0, ST_NOT_INITIALIZED = 1, ST_ALLOC_FAILED = 3, ST_INVALID_VALUE = 7, ST_NOT_SUPPORTED = 15 };
enum { R_32F = 0, R_16F = 2, R_16BF = 14, COMPUTE_32F = 68 };
enum { DESC_TRANSA = 3, DESC_TRANSB = 4, PREF_MAX_WORKSPACE_BYTES = 1 };

/* The public struct layouts of cublasLt.h, which the bridge reads by offset. */
typedef struct { uint64_t data[8]; } cublasLtMatmulAlgo_t;
typedef struct {
  cublasLtMatmulAlgo_t algo;
  size_t workspaceSize;
  cublasStatus_t state;
  float wavesCount;
  int reserved[4];
} cublasLtMatmulHeuristicResult_t;

#define HANDLE_TAG 0x746c4d4bu
#define ALGO_TAG 0x4f474c414b434f4dull /* data[0] of every algorithm handed out */

typedef struct { unsigned tag; } lt_handle;
typedef struct { int compute, scale, transa, transb; } lt_desc;
typedef struct { int type; uint64_t rows, cols; int64_t ld; } lt_layout;
typedef struct { uint64_t max_workspace; } lt_pref;

static int live;                    /* objects created and not yet destroyed */
static int algo_count = 1;          /* results the heuristic returns */
static unsigned bad_algos;          /* results (bit i) reported with a failed state */
static char fail_call[64];          /* the next call of this name returns fail_status */
static int fail_status;
static int64_t last[34];
static double last_scalars[2];
static int matmuls;

static int should_fail(const char *call) {
  if (!fail_call[0] || strcmp(call, fail_call) != 0) return 0;
  fail_call[0] = 0;
  return 1;
}
#define FAIL_POINT(name) \
  do { if (should_fail(name)) return fail_status; } while (0)

static void *make(size_t bytes) {
  void *p = calloc(1, bytes);
  if (p) live++;
  return p;
}
static cublasStatus_t unmake(void *p) {
  if (!p) return ST_INVALID_VALUE;
  free(p);
  live--;
  return ST_OK;
}

size_t cublasLtGetVersion(void) { return 130100; }

cublasStatus_t cublasLtCreate(lt_handle **h) {
  FAIL_POINT("cublasLtCreate");
  if (!h) return ST_INVALID_VALUE;
  *h = make(sizeof **h);
  if (!*h) return ST_ALLOC_FAILED;
  (*h)->tag = HANDLE_TAG;
  return ST_OK;
}
cublasStatus_t cublasLtDestroy(lt_handle *h) {
  FAIL_POINT("cublasLtDestroy");
  if (!h || h->tag != HANDLE_TAG) return ST_NOT_INITIALIZED;
  h->tag = 0;
  return unmake(h);
}

cublasStatus_t cublasLtMatmulDescCreate(lt_desc **d, int compute, int scale) {
  FAIL_POINT("cublasLtMatmulDescCreate");
  if (!d) return ST_INVALID_VALUE;
  *d = make(sizeof **d);
  if (!*d) return ST_ALLOC_FAILED;
  (*d)->compute = compute;
  (*d)->scale = scale;
  return ST_OK;
}
cublasStatus_t cublasLtMatmulDescDestroy(lt_desc *d) { FAIL_POINT("cublasLtMatmulDescDestroy"); return unmake(d); }
cublasStatus_t cublasLtMatmulDescSetAttribute(lt_desc *d, int attr, const void *buf, size_t size) {
  FAIL_POINT("cublasLtMatmulDescSetAttribute");
  /* Like the real library: the buffer size must match the attribute's type (int32_t here). */
  if (!d || !buf || size != sizeof(int32_t)) return ST_INVALID_VALUE;
  int32_t v;
  memcpy(&v, buf, sizeof v);
  if (v != 0 && v != 1) return ST_INVALID_VALUE;
  if (attr == DESC_TRANSA) d->transa = v;
  else if (attr == DESC_TRANSB) d->transb = v;
  else return ST_INVALID_VALUE;
  return ST_OK;
}

cublasStatus_t cublasLtMatrixLayoutCreate(lt_layout **l, int type, uint64_t rows, uint64_t cols, int64_t ld) {
  FAIL_POINT("cublasLtMatrixLayoutCreate");
  if (!l) return ST_INVALID_VALUE;
  *l = make(sizeof **l);
  if (!*l) return ST_ALLOC_FAILED;
  (*l)->type = type;
  (*l)->rows = rows;
  (*l)->cols = cols;
  (*l)->ld = ld;
  return ST_OK;
}
cublasStatus_t cublasLtMatrixLayoutDestroy(lt_layout *l) { FAIL_POINT("cublasLtMatrixLayoutDestroy"); return unmake(l); }

cublasStatus_t cublasLtMatmulPreferenceCreate(lt_pref **p) {
  FAIL_POINT("cublasLtMatmulPreferenceCreate");
  if (!p) return ST_INVALID_VALUE;
  *p = make(sizeof **p);
  return *p ? ST_OK : ST_ALLOC_FAILED;
}
cublasStatus_t cublasLtMatmulPreferenceDestroy(lt_pref *p) { FAIL_POINT("cublasLtMatmulPreferenceDestroy"); return unmake(p); }
cublasStatus_t cublasLtMatmulPreferenceSetAttribute(lt_pref *p, int attr, const void *buf, size_t size) {
  FAIL_POINT("cublasLtMatmulPreferenceSetAttribute");
  if (!p || !buf || attr != PREF_MAX_WORKSPACE_BYTES || size != sizeof(uint64_t)) return ST_INVALID_VALUE;
  memcpy(&p->max_workspace, buf, sizeof p->max_workspace);
  return ST_OK;
}

static void record_layout(int at, const lt_layout *l) {
  last[at] = l->type;
  last[at + 1] = (int64_t)l->rows;
  last[at + 2] = (int64_t)l->cols;
  last[at + 3] = l->ld;
}

/* Checks the operation as the real library would and records it; m, n, k come from op(A), op(B), D. */
static cublasStatus_t check_op(const lt_handle *h, const lt_desc *d, const lt_layout *a, const lt_layout *b, const lt_layout *c, const lt_layout *dl) {
  if (!h || h->tag != HANDLE_TAG) return ST_NOT_INITIALIZED;
  if (!d || !a || !b || !c || !dl) return ST_INVALID_VALUE;
  uint64_t m = dl->rows, n = dl->cols;
  uint64_t k = d->transa ? a->rows : a->cols;
  last[0] = (int64_t)m;
  last[1] = (int64_t)n;
  last[2] = (int64_t)k;
  last[3] = d->transa;
  last[4] = d->transb;
  last[5] = d->compute;
  last[6] = d->scale;
  record_layout(7, a);
  record_layout(11, b);
  record_layout(15, c);
  record_layout(19, dl);
  if ((d->transa ? a->cols : a->rows) != m) return ST_INVALID_VALUE;
  if ((d->transb ? b->cols : b->rows) != k || (d->transb ? b->rows : b->cols) != n) return ST_INVALID_VALUE;
  if (c->rows != m || c->cols != n || c->type != dl->type) return ST_INVALID_VALUE;
  if (m == 0 || n == 0 || k == 0) return ST_NOT_SUPPORTED;
  const lt_layout *all[4] = {a, b, c, dl};
  for (int i = 0; i < 4; i++)
    if (all[i]->ld < 0 || (uint64_t)all[i]->ld < all[i]->rows) return ST_NOT_SUPPORTED;
  /* The type pairs of cuBLASLt's table for CUBLAS_COMPUTE_32F with f32 scale: 16-bit A and B of one
   * type, C and D of that type or f32. */
  if (d->compute != COMPUTE_32F || d->scale != R_32F) return ST_NOT_SUPPORTED;
  if (a->type != b->type || (a->type != R_16BF && a->type != R_16F)) return ST_NOT_SUPPORTED;
  if (dl->type != a->type && dl->type != R_32F) return ST_NOT_SUPPORTED;
  return ST_OK;
}

static size_t algo_workspace(int i) { return (size_t)i * 4096; }

cublasStatus_t cublasLtMatmulAlgoGetHeuristic(lt_handle *h, lt_desc *d, lt_layout *a, lt_layout *b, lt_layout *c, lt_layout *dl, lt_pref *pref, int requested,
                                              cublasLtMatmulHeuristicResult_t *results, int *count) {
  FAIL_POINT("cublasLtMatmulAlgoGetHeuristic");
  if (!pref || !results || !count || requested <= 0) return ST_INVALID_VALUE;
  last[25] = (int64_t)pref->max_workspace;
  last[26] = requested;
  cublasStatus_t st = check_op(h, d, a, b, c, dl);
  if (st != ST_OK) return st;
  int n = 0;
  for (int i = 0; i < algo_count && n < requested; i++) {
    if (algo_workspace(i) > pref->max_workspace) continue;
    cublasLtMatmulHeuristicResult_t *r = &results[n++];
    memset(r, 0, sizeof *r);
    r->algo.data[0] = ALGO_TAG;
    r->algo.data[1] = (uint64_t)i;
    r->algo.data[2] = algo_workspace(i);
    r->workspaceSize = algo_workspace(i);
    r->state = (bad_algos >> i) & 1 ? ST_NOT_SUPPORTED : ST_OK;
    r->wavesCount = 1.0f + 0.25f * (float)i;
  }
  *count = n;
  return ST_OK;
}

static float bits_to_float(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}
static uint32_t float_to_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, mant = h & 0x3ff;
  if (exp == 0) {
    float v = (float)mant * (1.0f / 16777216.0f); /* subnormal: mant * 2^-24, exact */
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  return bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));
}
/* Round to nearest even, with overflow to infinity and subnormals. */
static uint16_t float_to_half(float f) {
  uint32_t u = float_to_bits(f);
  uint32_t sign = (u >> 16) & 0x8000, exp = (u >> 23) & 0xff, mant = u & 0x7fffff;
  if (exp == 0xff) return (uint16_t)(sign | 0x7c00 | (mant ? 0x200 : 0));
  int e = (int)exp - 127 + 15;
  if (e >= 31) return (uint16_t)(sign | 0x7c00);
  if (e <= 0) {
    if (e < -10) return (uint16_t)sign;
    mant |= 0x800000;
    int shift = 14 - e;
    uint32_t h = mant >> shift, rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) h++;
    return (uint16_t)(sign | h);
  }
  uint32_t h = ((uint32_t)e << 10) | (mant >> 13), rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++; /* a carry into the exponent is still right */
  return (uint16_t)(sign | h);
}
static uint16_t float_to_bf16(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x7fffff)) return (uint16_t)((u >> 16) | 0x40);
  return (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

static float load(const void *p, int type, size_t i) {
  if (type == R_16BF) return bits_to_float((uint32_t)((const uint16_t *)p)[i] << 16);
  if (type == R_16F) return half_to_float(((const uint16_t *)p)[i]);
  return ((const float *)p)[i];
}
static void store(void *p, int type, size_t i, float v) {
  if (type == R_16BF) ((uint16_t *)p)[i] = float_to_bf16(v);
  else if (type == R_16F) ((uint16_t *)p)[i] = float_to_half(v);
  else ((float *)p)[i] = v;
}

cublasStatus_t cublasLtMatmul(lt_handle *h, lt_desc *d, const void *alpha, const void *A, lt_layout *a, const void *B, lt_layout *b, const void *beta, const void *C,
                              lt_layout *c, void *D, lt_layout *dl, const cublasLtMatmulAlgo_t *algo, void *workspace, size_t workspace_bytes, void *stream) {
  FAIL_POINT("cublasLtMatmul");
  cublasStatus_t st = check_op(h, d, a, b, c, dl);
  if (st != ST_OK) return st;
  if (!alpha || !beta || !A || !B || !D || !algo || algo->data[0] != ALGO_TAG) return ST_INVALID_VALUE;
  if (workspace_bytes < algo->data[2] || (algo->data[2] && !workspace)) return ST_INVALID_VALUE;
  float al, be;
  memcpy(&al, alpha, sizeof al); /* scale type f32, pointer mode host */
  memcpy(&be, beta, sizeof be);
  if (be != 0.0f && !C) return ST_INVALID_VALUE;
  last[23] = (int64_t)algo->data[1];
  last[24] = (int64_t)workspace_bytes;
  last[27] = (int64_t)(uintptr_t)A;
  last[28] = (int64_t)(uintptr_t)B;
  last[29] = (int64_t)(uintptr_t)C;
  last[30] = (int64_t)(uintptr_t)D;
  last[31] = (int64_t)(uintptr_t)workspace;
  last[32] = (int64_t)(uintptr_t)stream;
  last[33] = ++matmuls;
  last_scalars[0] = al;
  last_scalars[1] = be;
  uint64_t m = dl->rows, n = dl->cols, k = d->transa ? a->rows : a->cols;
  for (uint64_t j = 0; j < n; j++)
    for (uint64_t i = 0; i < m; i++) {
      float acc = 0.0f;
      for (uint64_t p = 0; p < k; p++) {
        float av = load(A, a->type, d->transa ? p + i * (uint64_t)a->ld : i + p * (uint64_t)a->ld);
        float bv = load(B, b->type, d->transb ? j + p * (uint64_t)b->ld : p + j * (uint64_t)b->ld);
        acc += av * bv;
      }
      float v = al * acc;
      if (be != 0.0f) v += be * load(C, c->type, i + j * (uint64_t)c->ld); /* beta == 0: C is not read */
      store(D, dl->type, i + j * (uint64_t)dl->ld, v);
    }
  return ST_OK;
}

/* For the test. */

/* What the last heuristic query and matmul saw: [0-2] m n k, [3-4] transa transb, [5-6] compute and
 * scale type, [7-10] A type rows cols ld, [11-14] B, [15-18] C, [19-22] D, [23] algo index,
 * [24] workspace bytes, [25] preference workspace limit, [26] algos requested, [27-32] A B C D
 * workspace stream addresses, [33] matmuls so far; scalars: alpha, beta. */
int mock_lt_last(int64_t *out, double *scalars) {
  memcpy(out, last, sizeof last);
  memcpy(scalars, last_scalars, sizeof last_scalars);
  return (int)(sizeof last / sizeof last[0]);
}
/* The heuristic's answer: `count` results, those with bit i of `bad` set reported as failed. */
void mock_lt_set_algos(int count, unsigned bad) {
  algo_count = count;
  bad_algos = bad;
}
/* Makes the next call named `call` return `status`. */
void mock_lt_fail(const char *call, int status) {
  strncpy(fail_call, call, sizeof fail_call - 1);
  fail_status = status;
}
int mock_lt_live(void) { return live; }
/* sizeof and offsets of cublasLtMatmulHeuristicResult_t as this compiler lays it out. */
void mock_lt_result_layout(int *out) {
  out[0] = (int)sizeof(cublasLtMatmulHeuristicResult_t);
  out[1] = (int)offsetof(cublasLtMatmulHeuristicResult_t, algo);
  out[2] = (int)offsetof(cublasLtMatmulHeuristicResult_t, workspaceSize);
  out[3] = (int)offsetof(cublasLtMatmulHeuristicResult_t, state);
  out[4] = (int)offsetof(cublasLtMatmulHeuristicResult_t, wavesCount);
  out[5] = (int)sizeof(cublasLtMatmulAlgo_t);
}
