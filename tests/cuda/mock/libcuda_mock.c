/* A stand-in for libcuda.so with the driver entry points Tessera binds, for testing the FFI
 * bridge on machines without a GPU: "device" memory is host memory, copies are memcpy, and a
 * launch records the kernel name, geometry and packed argument bytes for the test to read, then
 * calls the test's launch hook if it set one (a JavaScript model of the kernel can run there).
 * A kernel fault and a hang can be staged through the environment: the first launch of a kernel
 * whose name contains MOCK_FAULT_KERNEL fails with CUDA_ERROR_ILLEGAL_ADDRESS (700), and from
 * then on every launch, copy, free and synchronization fails the same way, as a real context
 * does after a fault; a launch of a kernel whose name contains MOCK_HANG_KERNEL never returns.
 * Stream capture is held to the driver's rules for CU_STREAM_CAPTURE_MODE_THREAD_LOCAL (the mode
 * the backend captures in): an allocation, a free, a synchronous copy or a synchronization while
 * capturing fails with CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (900) and invalidates the capture,
 * so cuStreamEndCapture then fails with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED (901).
 *
 * With MOCK_EMU naming the kernel emulator (tests/cuda/emu, libtessera_emu.so), launches run:
 * the emulator executes the kernel's own source, compiled for the CPU, on the stand-in's memory.
 * A capture then records its launches, copies and fills as graph nodes, and a graph launch
 * replays them, as a real driver's graph does. A launch the emulator fails (a deadlock, a bad
 * shared address, an argument size that is not the kernel's) prints why, returns
 * CUDA_ERROR_LAUNCH_FAILED (719), and, as on a device, every later call fails the same way.
 * MOCK_CC=80 (or 86, 89, 90) sets the compute capability the device reports (default 9.0), with
 * that architecture's SM count, shared memory and L2 size.
 *
 * cuLaunchKernelEx launches as cuLaunchKernel does, with the thread-block cluster its
 * CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION attribute names: a grid the cluster does not divide, or a
 * cluster of more than 8 blocks, fails with CUDA_ERROR_INVALID_CLUSTER_SIZE (912). It records
 * whether CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION was set (mock_last_overlap,
 * mock_overlap_launches); the kernels run one after another regardless, which is what a kernel's
 * griddepcontrol.wait guarantees. With MOCK_NO_PDL set, that attribute fails with
 * CUDA_ERROR_NOT_SUPPORTED (801), as on a device or driver without programmatic dependent launch.
 * Any other attribute fails with CUDA_ERROR_INVALID_VALUE (1), so a misread config shows. The cluster reaches the emulator as geometry words 9..11
 * (1, 1, 1 for cuLaunchKernel), and cuOccupancyMaxActiveClusters answers as if each block took a
 * whole SM: floor(SMs / cluster size). Built with MOCK_NO_CLUSTER_LAUNCH, the stand-in lacks both
 * symbols, as a driver older than CUDA 11.8 does.
 *
 * Device allocations are guarded: each ends where an inaccessible page begins and an inaccessible
 * page lies before it, so an emulated kernel that reads or writes past either end faults. The size
 * is rounded up to 16 bytes only (a device rounds to 256 or more, which hides short overruns),
 * so pointers keep the alignment of a 16-byte vector access and an overrun of more than the last
 * vector's tail faults. The emulator turns that fault
 * into CUDA_ERROR_ILLEGAL_ADDRESS (700), sticky as on a device, and its message names the
 * kernel, block, thread and the allocation the address missed (mock_describe_address). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <stdio.h>
#include <dlfcn.h>
#include <pthread.h>
#include <sys/mman.h>

typedef int CUresult;
static char last_name[128];
static unsigned last_geom[7];
static unsigned last_cluster[3] = {1, 1, 1};
static int last_overlap, overlap_launches;
static unsigned char last_args[4096];
static size_t last_args_size;
static int launches, graph_launches, allocs;
/* Capture is per thread (the backend captures in CU_STREAM_CAPTURE_MODE_THREAD_LOCAL; an engine
 * in a worker thread launches while another thread may be capturing). */
static _Thread_local int capturing;
typedef void (*launch_hook_t)(const char *name, unsigned grid_x);
static launch_hook_t launch_hook;
static int sticky; /* the status every call returns after a staged fault */
#define STICKY do { if (sticky) return sticky; } while (0)
static _Thread_local int capture_invalid; /* an unsafe call was made during the capture in progress */
#define NOT_CAPTURING do { if (capturing) { capture_invalid = 1; return 900; } } while (0)

/* The kernel emulator (MOCK_EMU), loaded at the first module load. */
typedef int (*emu_launch_t)(const char *name, const unsigned *geom, const void *args, size_t args_size, char *err, size_t err_len);
static emu_launch_t emu_launch;
static char emu_error[1024];
int mock_describe_address(uint64_t addr, char *buf, size_t len);
static void emu_load(void) {
  const char *path = getenv("MOCK_EMU");
  if (emu_launch || !path || !*path) return;
  void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  if (!h) { fprintf(stderr, "[stand-in libcuda] cannot load the kernel emulator %s: %s\n", path, dlerror()); return; }
  emu_launch = (emu_launch_t)dlsym(h, "emu_launch");
  void (*set_describe)(int (*)(uint64_t, char *, size_t)) = (void (*)(int (*)(uint64_t, char *, size_t)))dlsym(h, "emu_set_describe_address");
  if (set_describe) set_describe(mock_describe_address);
}

/* Graph nodes recorded while capturing with the emulator loaded. */
/* The emulator's launch geometry: grid xyz, block xyz, dynamic shared memory, the most dynamic
 * shared memory the function may use, the most a block may have, cluster xyz. */
#define GEOM_WORDS 12
typedef struct { int kind; /* 0 launch, 1 copy, 2 fill32 */ char name[128]; unsigned geom[GEOM_WORDS]; unsigned char *args; size_t size; void *dst; const void *src; unsigned value; } Node;
typedef struct { Node *nodes; int n, cap; } Graph;
static _Thread_local Graph capture_nodes;
static Node *add_node(Graph *g) {
  if (g->n == g->cap) { g->cap = g->cap ? 2 * g->cap : 64; g->nodes = realloc(g->nodes, sizeof(Node) * g->cap); }
  Node *n = &g->nodes[g->n++];
  memset(n, 0, sizeof *n);
  return n;
}
static void free_graph(Graph *g) {
  for (int i = 0; i < g->n; i++) free(g->nodes[i].args);
  free(g->nodes);
  memset(g, 0, sizeof *g);
}
/* The emulator returns -2 for an access outside every allocation (CUDA_ERROR_ILLEGAL_ADDRESS, as
 * the device reports it), -3 for a misaligned vector access (CUDA_ERROR_MISALIGNED_ADDRESS); any
 * other failure is CUDA_ERROR_LAUNCH_FAILED. */
static int run_launch(const char *name, const unsigned *geom, const unsigned char *args, size_t size) {
  const int rc = emu_launch(name, geom, args, size, emu_error, sizeof emu_error);
  if (rc != 0) {
    fprintf(stderr, "[kernel emulator] %s\n", emu_error);
    return sticky = rc == -2 ? 700 : rc == -3 ? 716 : 719;
  }
  return 0;
}

/* MOCK_CC: the compute capability, as 80, 86, 89 or 90 (the default). */
static int arch(void) { const char *cc = getenv("MOCK_CC"); return cc && *cc ? atoi(cc) : 90; }
/* The most shared memory a block may have (opt-in), per architecture. */
static int smem_optin(void) { int a = arch(); return a == 80 ? 166912 : a == 90 ? 232448 : 101376; }

CUresult cuInit(unsigned flags) { (void)flags; return 0; }
CUresult cuDriverGetVersion(int *v) { *v = 13000; return 0; }
CUresult cuDeviceGetCount(int *n) { *n = 1; return 0; }
CUresult cuDeviceGet(int *d, int ordinal) { if (ordinal != 0) return 101; *d = 0; return 0; }
CUresult cuDeviceGetName(char *name, int len, int dev) { (void)dev; strncpy(name, "Mock GPU", len); return 0; }
CUresult cuDeviceGetAttribute(int *v, int attr, int dev) {
  (void)dev;
  /* MOCK_CC: 80 (A100), 86 (A10), 89 (L4), default 90 (H100). */
  const int a = arch();
  switch (attr) {
    case 75: *v = a / 10; break;    /* compute capability major */
    case 76: *v = a % 10; break;
    case 16: *v = a == 80 ? 108 : a == 86 ? 72 : a == 89 ? 58 : 132; break;  /* SMs */
    case 97: *v = smem_optin(); break;                                       /* shared memory per block, opt-in */
    case 38: *v = a == 80 ? 40 << 20 : a == 86 ? 6 << 20 : a == 89 ? 48 << 20 : 50 << 20; break; /* L2 bytes */
    default: *v = 1;
  }
  return 0;
}
CUresult cuDeviceTotalMem_v2(size_t *b, int dev) { (void)dev; *b = (size_t)80 << 30; return 0; }
CUresult cuDevicePrimaryCtxRetain(void **ctx, int dev) { (void)dev; *ctx = (void *)0x1; return 0; }
CUresult cuDevicePrimaryCtxRelease_v2(int dev) { (void)dev; return 0; }
CUresult cuCtxSetCurrent(void *ctx) { (void)ctx; return 0; }
CUresult cuCtxSynchronize(void) { NOT_CAPTURING; return 0; }
/* 70 GiB of 80 free, or MOCK_FREE_BYTES. */
CUresult cuMemGetInfo_v2(size_t *f, size_t *t) {
  const char *free_bytes = getenv("MOCK_FREE_BYTES");
  *f = free_bytes && *free_bytes ? (size_t)strtoull(free_bytes, NULL, 10) : (size_t)70 << 30;
  *t = (size_t)80 << 30;
  return 0;
}
/* Guarded device allocations: [guard page][slack][size rounded up to 16][guard page]. */
typedef struct { uint64_t ptr; size_t size, body; char *base; size_t span; } Alloc;
static Alloc *alloc_table;
static int n_alloc_table, cap_alloc_table;
static pthread_mutex_t alloc_lock = PTHREAD_MUTEX_INITIALIZER;
#define PAGE ((size_t)4096)
static uint64_t guarded_alloc(size_t size) {
  const size_t body = ((size ? size : 1) + 15) & ~(size_t)15;
  const size_t span = ((body + PAGE - 1) & ~(PAGE - 1)) + 2 * PAGE;
  char *base = mmap(NULL, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return 0;
  mprotect(base, PAGE, PROT_NONE);
  mprotect(base + span - PAGE, PAGE, PROT_NONE);
  const uint64_t ptr = (uint64_t)(uintptr_t)(base + span - PAGE - body);
  pthread_mutex_lock(&alloc_lock);
  if (n_alloc_table == cap_alloc_table) {
    cap_alloc_table = cap_alloc_table ? 2 * cap_alloc_table : 256;
    alloc_table = realloc(alloc_table, sizeof(Alloc) * cap_alloc_table);
  }
  alloc_table[n_alloc_table++] = (Alloc){ptr, size, body, base, span};
  pthread_mutex_unlock(&alloc_lock);
  return ptr;
}
static int guarded_free(uint64_t ptr) {
  pthread_mutex_lock(&alloc_lock);
  for (int i = 0; i < n_alloc_table; i++)
    if (alloc_table[i].ptr == ptr) {
      Alloc a = alloc_table[i];
      alloc_table[i] = alloc_table[--n_alloc_table];
      pthread_mutex_unlock(&alloc_lock);
      munmap(a.base, a.span);
      return 0;
    }
  pthread_mutex_unlock(&alloc_lock);
  return 1; /* CUDA_ERROR_INVALID_VALUE: not an allocation */
}
/* Which allocation an address missed, in words: into buf; 1 when one is near (its guard pages or
 * slack), 0 when the address is no allocation's. */
int mock_describe_address(uint64_t addr, char *buf, size_t len) {
  int found = 0;
  pthread_mutex_lock(&alloc_lock);
  for (int i = 0; i < n_alloc_table && !found; i++) {
    const Alloc *a = &alloc_table[i];
    const uint64_t lo = (uint64_t)(uintptr_t)a->base, hi = lo + a->span;
    if (addr < lo || addr >= hi) continue;
    found = 1;
    if (addr >= a->ptr + a->size)
      snprintf(buf, len, "%llu bytes past the end of the %zu-byte allocation at 0x%llx", (unsigned long long)(addr - a->ptr - a->size), a->size, (unsigned long long)a->ptr);
    else if (addr < a->ptr)
      snprintf(buf, len, "%llu bytes before the start of the %zu-byte allocation at 0x%llx", (unsigned long long)(a->ptr - addr), a->size, (unsigned long long)a->ptr);
    else
      snprintf(buf, len, "inside the %zu-byte allocation at 0x%llx", a->size, (unsigned long long)a->ptr);
  }
  pthread_mutex_unlock(&alloc_lock);
  if (!found) snprintf(buf, len, "no allocation holds it");
  return found;
}
CUresult cuMemAlloc_v2(uint64_t *p, size_t b) { NOT_CAPTURING; uint64_t m = guarded_alloc(b); if (!m) return 2; *p = m; allocs++; return 0; }
CUresult cuMemFree_v2(uint64_t p) { STICKY; NOT_CAPTURING; return p ? guarded_free(p) : 0; }
CUresult cuMemAllocHost_v2(void **p, size_t b) { NOT_CAPTURING; *p = calloc(1, b ? b : 1); if (*p) allocs++; return *p ? 0 : 2; }
CUresult cuMemFreeHost(void *p) { NOT_CAPTURING; free(p); return 0; }
CUresult cuMemcpyHtoD_v2(uint64_t d, const void *s, size_t b) { STICKY; NOT_CAPTURING; memcpy((void *)(uintptr_t)d, s, b); return 0; }
CUresult cuMemcpyDtoH_v2(void *d, uint64_t s, size_t b) { STICKY; NOT_CAPTURING; memcpy(d, (const void *)(uintptr_t)s, b); return 0; }
/* Async copies are legal while capturing (a real driver records them as graph nodes; this one
 * copies at once). */
/* With the emulator, a copy or fill while capturing becomes a graph node (the host side is read
 * when the graph runs, as on a device). */
static int record_copy(void *d, const void *s, size_t b) {
  if (!(emu_launch && capturing)) return 0;
  Node *n = add_node(&capture_nodes); n->kind = 1; n->dst = d; n->src = s; n->size = b;
  return 1;
}
static void fill32(void *d, unsigned v, size_t n) { uint32_t *p = (uint32_t *)d; for (size_t i = 0; i < n; i++) p[i] = v; }
CUresult cuMemcpyHtoDAsync_v2(uint64_t d, const void *s, size_t b, void *st) { (void)st; STICKY; if (!record_copy((void *)(uintptr_t)d, s, b)) memcpy((void *)(uintptr_t)d, s, b); return 0; }
CUresult cuMemcpyDtoHAsync_v2(void *d, uint64_t s, size_t b, void *st) { (void)st; STICKY; if (!record_copy(d, (const void *)(uintptr_t)s, b)) memcpy(d, (const void *)(uintptr_t)s, b); return 0; }
CUresult cuMemcpyDtoDAsync_v2(uint64_t d, uint64_t s, size_t b, void *st) { (void)st; STICKY; if (!record_copy((void *)(uintptr_t)d, (void *)(uintptr_t)s, b)) memmove((void *)(uintptr_t)d, (void *)(uintptr_t)s, b); return 0; }
CUresult cuMemsetD32Async(uint64_t d, unsigned v, size_t n, void *st) {
  (void)st; STICKY;
  if (emu_launch && capturing) { Node *x = add_node(&capture_nodes); x->kind = 2; x->dst = (void *)(uintptr_t)d; x->value = v; x->size = n; return 0; }
  fill32((void *)(uintptr_t)d, v, n);
  return 0;
}
CUresult cuModuleLoadData(void **m, const void *image) { (void)image; NOT_CAPTURING; emu_load(); *m = (void *)0x2; return 0; }
CUresult cuModuleUnload(void *m) { (void)m; return 0; }
/* A function handle: its name first (a launch reads the handle as the name), then the dynamic
 * shared memory it may use (CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, 8). */
typedef struct { char name[128]; int max_dynamic_smem; } Function;
CUresult cuModuleGetFunction(void **f, void *m, const char *name) {
  (void)m;
  Function *fn = calloc(1, sizeof *fn);
  strncpy(fn->name, name, sizeof fn->name - 1);
  *f = fn;
  return 0;
}
CUresult cuFuncSetAttribute(void *f, int a, int v) {
  if (a == 8) {
    if (v < 0 || v > smem_optin()) return 1;
    ((Function *)f)->max_dynamic_smem = v;
  }
  return 0;
}
CUresult cuFuncGetAttribute(int *v, int a, void *f) { (void)a; (void)f; *v = 0; return 0; }
/* cuLaunchKernel and cuLaunchKernelEx: `cluster` is 1, 1, 1 for a launch without clusters;
 * `overlap`, whether it carried programmatic stream serialization. */
static CUresult launch_kernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem, const unsigned cluster[3], int overlap, void **params, void **extra) {
  STICKY;
  if (params || !extra || extra[0] != (void *)1 || extra[2] != (void *)2 || extra[4] != (void *)0) return 1;
  if (!cluster[0] || !cluster[1] || !cluster[2] || gx % cluster[0] || gy % cluster[1] || gz % cluster[2] || cluster[0] * cluster[1] * cluster[2] > 8) return 912;
  strncpy(last_name, (const char *)f, sizeof last_name - 1);
  /* For the emulator: the geometry, then the dynamic shared memory this function may launch with
   * (48 KiB unless raised through cuFuncSetAttribute), the most a block may have in all, and the
   * cluster. */
  const int raised = ((const Function *)f)->max_dynamic_smem;
  unsigned g[GEOM_WORDS] = {gx, gy, gz, bx, by, bz, smem, (unsigned)(raised > 49152 ? raised : 49152), (unsigned)smem_optin(), cluster[0], cluster[1], cluster[2]};
  memcpy(last_geom, g, sizeof last_geom);
  memcpy(last_cluster, cluster, sizeof last_cluster);
  last_overlap = overlap;
  overlap_launches += overlap;
  last_args_size = *(size_t *)extra[3];
  if (last_args_size > sizeof last_args) return 1;
  memcpy(last_args, extra[1], last_args_size);
  launches++;
  if (emu_launch && capturing) {
    Node *n = add_node(&capture_nodes);
    strncpy(n->name, last_name, sizeof n->name - 1);
    memcpy(n->geom, g, sizeof g);
    n->args = malloc(last_args_size ? last_args_size : 1);
    memcpy(n->args, last_args, last_args_size);
    n->size = last_args_size;
  }
  const char *fault = getenv("MOCK_FAULT_KERNEL"), *hang = getenv("MOCK_HANG_KERNEL");
  if (fault && *fault && strstr(last_name, fault)) return sticky = 700;
  if (hang && *hang && strstr(last_name, hang)) for (;;) pause();
  if (emu_launch && !capturing) { int rc = run_launch(last_name, g, last_args, last_args_size); if (rc) return rc; }
  if (launch_hook && !capturing) launch_hook(last_name, gx);
  return 0;
}
CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned smem, void *st, void **params, void **extra) {
  (void)st;
  static const unsigned no_cluster[3] = {1, 1, 1};
  return launch_kernel(f, gx, gy, gz, bx, by, bz, smem, no_cluster, 0, params, extra);
}
#ifndef MOCK_NO_CLUSTER_LAUNCH
/* CUlaunchConfig and CUlaunchAttribute as cuda.h (CUDA 13.0) lays them out on a 64-bit host. */
typedef struct {
  int id;
  /* The real union holds pointers and 64-bit words (hence the value at 8). */
  union { char pad[64]; uint64_t align; struct { unsigned x, y, z; } clusterDim; int programmaticStreamSerializationAllowed; } value;
} LaunchAttribute;
typedef struct {
  unsigned gridDimX, gridDimY, gridDimZ, blockDimX, blockDimY, blockDimZ, sharedMemBytes;
  void *hStream;
  const LaunchAttribute *attrs;
  unsigned numAttrs;
} LaunchConfig;
_Static_assert(sizeof(LaunchAttribute) == 72 && offsetof(LaunchAttribute, value) == 8, "CUlaunchAttribute layout");
_Static_assert(sizeof(LaunchConfig) == 56 && offsetof(LaunchConfig, hStream) == 32 && offsetof(LaunchConfig, attrs) == 40 && offsetof(LaunchConfig, numAttrs) == 48, "CUlaunchConfig layout");
/* The cluster a config's CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION (4) names (the last, if several);
 * 0 if it names none. */
static int config_cluster(const LaunchConfig *c, unsigned cluster[3]) {
  int found = 0;
  for (unsigned i = 0; i < c->numAttrs; i++)
    if (c->attrs[i].id == 4) {
      cluster[0] = c->attrs[i].value.clusterDim.x; cluster[1] = c->attrs[i].value.clusterDim.y; cluster[2] = c->attrs[i].value.clusterDim.z;
      found = 1;
    }
  return found;
}
CUresult cuLaunchKernelEx(const LaunchConfig *c, void *f, void **params, void **extra) {
  if (!c) return 1;
  /* Every stream the stand-in makes is 0x3 (cuStreamCreate): another value means the config's
   * layout was misread. CUDA_ERROR_INVALID_HANDLE. */
  if (c->hStream && c->hStream != (void *)0x3) return 400;
  if (c->numAttrs && !c->attrs) return 1;
  int overlap = 0;
  for (unsigned i = 0; i < c->numAttrs; i++) {
    const int id = c->attrs[i].id;
    if (id == 6) {
      const char *no_pdl = getenv("MOCK_NO_PDL");
      if (no_pdl && *no_pdl) return 801;
      overlap = c->attrs[i].value.programmaticStreamSerializationAllowed != 0;
    } else if (id != 4 && id != 0) {
      return 1;
    }
  }
  unsigned cluster[3] = {1, 1, 1};
  config_cluster(c, cluster);
  return launch_kernel(f, c->gridDimX, c->gridDimY, c->gridDimZ, c->blockDimX, c->blockDimY, c->blockDimZ, c->sharedMemBytes, cluster, overlap, params, extra);
}
/* As if each block took a whole SM (the kernels that run in clusters are one block per SM). */
CUresult cuOccupancyMaxActiveClusters(int *n, void *f, const LaunchConfig *c) {
  (void)f;
  if (!c) return 1;
  unsigned cluster[3];
  if (!config_cluster(c, cluster)) return 912;
  const unsigned blocks = cluster[0] * cluster[1] * cluster[2];
  if (!blocks || blocks > 8) return 912;
  int sms;
  cuDeviceGetAttribute(&sms, 16, 0);
  *n = sms / (int)blocks;
  return 0;
}
#endif
CUresult cuStreamCreate(void **s, unsigned flags) { (void)flags; *s = (void *)0x3; return 0; }
CUresult cuStreamSynchronize(void *s) { (void)s; STICKY; NOT_CAPTURING; return 0; }
CUresult cuStreamDestroy_v2(void *s) { (void)s; return 0; }
CUresult cuEventCreate(void **e, unsigned flags) { (void)flags; *e = (void *)0x4; return 0; }
CUresult cuEventRecord(void *e, void *s) { (void)e; (void)s; STICKY; return 0; }
CUresult cuEventSynchronize(void *e) { (void)e; STICKY; NOT_CAPTURING; return 0; }
CUresult cuEventElapsedTime(float *ms, void *a, void *b) { (void)a; (void)b; STICKY; *ms = 1.5f; return 0; }
CUresult cuEventDestroy_v2(void *e) { (void)e; STICKY; return 0; }
CUresult cuStreamBeginCapture_v2(void *s, int mode) { (void)s; (void)mode; capturing = 1; capture_invalid = 0; free_graph(&capture_nodes); return 0; }
/* Without the emulator a graph is a token (0x5, 0x6); with it, a Graph of recorded nodes. */
CUresult cuStreamEndCapture(void *s, void **g) {
  (void)s;
  capturing = 0;
  if (capture_invalid) { *g = 0; free_graph(&capture_nodes); return 901; }
  if (!emu_launch) { *g = (void *)0x5; return 0; }
  Graph *graph = malloc(sizeof *graph);
  *graph = capture_nodes;
  memset(&capture_nodes, 0, sizeof capture_nodes);
  *g = graph;
  return 0;
}
CUresult cuGraphInstantiateWithFlags(void **e, void *g, uint64_t f) {
  (void)f;
  if (!emu_launch) { *e = (void *)0x6; return 0; }
  const Graph *src = g;
  Graph *exec = calloc(1, sizeof *exec);
  for (int i = 0; i < src->n; i++) {
    Node *n = add_node(exec);
    *n = src->nodes[i];
    if (n->kind == 0) { n->args = malloc(n->size ? n->size : 1); memcpy(n->args, src->nodes[i].args, n->size); }
  }
  *e = exec;
  return 0;
}
CUresult cuGraphLaunch(void *e, void *s) {
  (void)s;
  STICKY;
  graph_launches++;
  if (!emu_launch) return 0;
  const Graph *exec = e;
  for (int i = 0; i < exec->n; i++) {
    const Node *n = &exec->nodes[i];
    if (n->kind == 1) memmove(n->dst, n->src, n->size);
    else if (n->kind == 2) fill32(n->dst, n->value, n->size);
    else { int rc = run_launch(n->name, n->geom, n->args, n->size); if (rc) return rc; }
  }
  return 0;
}
CUresult cuGraphExecDestroy(void *e) { if (emu_launch && e) { free_graph(e); free(e); } return 0; }
CUresult cuGraphDestroy(void *g) { if (emu_launch && g) { free_graph(g); free(g); } return 0; }
#ifndef MOCK_NO_TENSOR_MAP
/* Records its arguments and fills the map with them, as little-endian 64-bit words (the layout
 * the kernel emulator's TMA reads, tests/cuda/emu/runtime.cpp):
 *   0      the global address
 *   1..5   globalDim[0..4] (0 past the rank)
 *   6..9   globalStrides[0..3]
 *   10     boxDim[0..4], 12 bits each
 *   11     elementStrides[0..4], 4 bits each (bits 0-19); dtype << 20 (8 bits); interleave << 28,
 *          swizzle << 32, l2 promotion << 36, OOB fill << 40, rank << 44 (4 bits each)
 *   12, 13 zero
 *   14     the bytes "TMAPMOCK"
 *   15     the call count
 * Like the driver, it rejects a null or unaligned address and a map that is not 64-byte aligned. */
static struct {
  int dtype, rank, interleave, swizzle, l2, oob, calls;
  uint64_t address, dims[5], strides[4];
  unsigned box[5], elem_strides[5];
} tmap;
CUresult cuTensorMapEncodeTiled(void *map, int dtype, unsigned rank, void *address, const uint64_t *dims, const uint64_t *strides, const unsigned *box, const unsigned *elem_strides, int interleave, int swizzle, int l2, int oob) {
  if (rank < 1 || rank > 5 || !address || (uintptr_t)address % 16 || (uintptr_t)map % 64) return 1;
  tmap.dtype = dtype; tmap.rank = (int)rank; tmap.interleave = interleave; tmap.swizzle = swizzle; tmap.l2 = l2; tmap.oob = oob;
  tmap.address = (uint64_t)(uintptr_t)address;
  for (unsigned i = 0; i < 5; i++) {
    tmap.dims[i] = i < rank ? dims[i] : 0;
    tmap.box[i] = i < rank ? box[i] : 0;
    tmap.elem_strides[i] = i < rank ? elem_strides[i] : 0;
    if (i < 4) tmap.strides[i] = i + 1 < rank ? strides[i] : 0;
  }
  tmap.calls++;
  uint64_t boxes = 0, packed = 0;
  for (unsigned i = 0; i < 5; i++) {
    boxes |= (uint64_t)(tmap.box[i] & 0xfff) << (12 * i);
    packed |= (uint64_t)(tmap.elem_strides[i] & 0xf) << (4 * i);
  }
  packed |= ((uint64_t)(dtype & 0xff) << 20) | ((uint64_t)(interleave & 0xf) << 28) | ((uint64_t)(swizzle & 0xf) << 32) | ((uint64_t)(l2 & 0xf) << 36) |
            ((uint64_t)(oob & 0xf) << 40) | ((uint64_t)rank << 44);
  uint64_t words[16] = {tmap.address, tmap.dims[0], tmap.dims[1], tmap.dims[2], tmap.dims[3], tmap.dims[4], tmap.strides[0], tmap.strides[1],
                        tmap.strides[2], tmap.strides[3], boxes, packed, 0, 0, 0x4b434f4d50414d54ull /* "TMAPMOCK" */, (uint64_t)tmap.calls};
  memcpy(map, words, sizeof words);
  return 0;
}
/* The last tensor map's arguments: ints = {dtype, rank, interleave, swizzle, l2, oob},
 * words = {address, dims[5], strides[4]}, box = {box[5], elementStrides[5]}; returns the call count. */
int mock_last_tensor_map(int *ints, uint64_t *words, unsigned *box) {
  int i6[6] = {tmap.dtype, tmap.rank, tmap.interleave, tmap.swizzle, tmap.l2, tmap.oob};
  memcpy(ints, i6, sizeof i6);
  words[0] = tmap.address;
  memcpy(words + 1, tmap.dims, sizeof tmap.dims);
  memcpy(words + 6, tmap.strides, sizeof tmap.strides);
  memcpy(box, tmap.box, sizeof tmap.box);
  memcpy(box + 5, tmap.elem_strides, sizeof tmap.elem_strides);
  return tmap.calls;
}
#endif
CUresult cuGetErrorName(int status, const char **name) {
  *name = status == 101 ? "CUDA_ERROR_INVALID_DEVICE" : status == 1 ? "CUDA_ERROR_INVALID_VALUE" : status == 700 ? "CUDA_ERROR_ILLEGAL_ADDRESS"
        : status == 716 ? "CUDA_ERROR_MISALIGNED_ADDRESS" : status == 719 ? "CUDA_ERROR_LAUNCH_FAILED"
        : status == 900 ? "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED" : status == 901 ? "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"
        : status == 912 ? "CUDA_ERROR_INVALID_CLUSTER_SIZE" : status == 400 ? "CUDA_ERROR_INVALID_HANDLE"
        : status == 801 ? "CUDA_ERROR_NOT_SUPPORTED" : "CUDA_ERROR_UNKNOWN";
  return 0;
}

/* For the test. */
int mock_last_launch(char *name, unsigned *geom, unsigned char *args) {
  strcpy(name, last_name);
  memcpy(geom, last_geom, sizeof last_geom);
  memcpy(args, last_args, last_args_size);
  return (int)last_args_size;
}
/* The last launch's cluster (1, 1, 1 for cuLaunchKernel). */
void mock_last_cluster(unsigned *cluster) { memcpy(cluster, last_cluster, sizeof last_cluster); }
int mock_last_overlap(void) { return last_overlap; }
int mock_overlap_launches(void) { return overlap_launches; }
int mock_counts(int *l, int *g) { *l = launches; *g = graph_launches; return 0; }
void mock_set_launch_hook(launch_hook_t hook) { launch_hook = hook; }
int mock_allocs(void) { return allocs; }
/* The emulator's last failure ("" if none), and whether it is loaded. */
const char *mock_emu_error(void) { return emu_error; }
int mock_emu_loaded(void) { return emu_launch != 0; }
/* Forgets a staged or emulated fault, so that a test can go on after checking one. */
void mock_clear_fault(void) { sticky = 0; emu_error[0] = 0; }
