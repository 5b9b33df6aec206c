/* cudaprobe: proves a container can use the GPU through the CUDA driver API alone.
 * dlopen("libcuda.so.1") by soname (no CUDA toolkit in the image), JIT-compile a PTX kernel,
 * launch it over N elements and verify every result on the CPU. Exit 0 only if all of that worked.
 *   cudaprobe [N]      default N = 1048576
 */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int CUresult;
typedef int CUdevice;
typedef void *CUcontext;
typedef void *CUmodule;
typedef void *CUfunction;
typedef unsigned long long CUdeviceptr;

/* out[i] = in[i] * 3 + i, in unsigned 32-bit arithmetic */
static const char *PTX =
    ".version 7.0\n"
    ".target sm_50\n"
    ".address_size 64\n"
    ".visible .entry k(.param .u64 out, .param .u64 in, .param .u32 n)\n"
    "{\n"
    "  .reg .pred p;\n"
    "  .reg .b32 r<8>;\n"
    "  .reg .b64 rd<8>;\n"
    "  ld.param.u64 rd1, [out];\n"
    "  ld.param.u64 rd2, [in];\n"
    "  ld.param.u32 r1, [n];\n"
    "  mov.u32 r2, %ctaid.x;\n"
    "  mov.u32 r3, %ntid.x;\n"
    "  mov.u32 r4, %tid.x;\n"
    "  mad.lo.u32 r5, r2, r3, r4;\n"
    "  setp.ge.u32 p, r5, r1;\n"
    "  @p bra DONE;\n"
    "  cvta.to.global.u64 rd3, rd1;\n"
    "  cvta.to.global.u64 rd4, rd2;\n"
    "  mul.wide.u32 rd5, r5, 4;\n"
    "  add.s64 rd6, rd4, rd5;\n"
    "  ld.global.u32 r6, [rd6];\n"
    "  mad.lo.u32 r7, r6, 3, r5;\n"
    "  add.s64 rd7, rd3, rd5;\n"
    "  st.global.u32 [rd7], r7;\n"
    "DONE:\n"
    "  ret;\n"
    "}\n";

/* Each entry point by its exact exported name: a later _vN of a function may take other arguments
 * (CUDA 13 has cuCtxSynchronize_v2(CUcontext)), so never guess a version suffix. */
#define LOAD(name, sym) \
    name##_t name = (name##_t)dlsym(h, sym); \
    if (!name) { printf("cudaprobe: missing symbol %s\n", sym); return 3; }
#define CHECK(call) do { CUresult r_ = (call); if (r_ != 0) { \
    printf("cudaprobe: %s failed: error %d\n", #call, r_); return 4; } } while (0)

typedef CUresult (*cuInit_t)(unsigned);
typedef CUresult (*cuDriverGetVersion_t)(int *);
typedef CUresult (*cuDeviceGetCount_t)(int *);
typedef CUresult (*cuDeviceGet_t)(CUdevice *, int);
typedef CUresult (*cuDeviceGetName_t)(char *, int, CUdevice);
typedef CUresult (*cuCtxCreate_t)(CUcontext *, unsigned, CUdevice);
typedef CUresult (*cuModuleLoadData_t)(CUmodule *, const void *);
typedef CUresult (*cuModuleGetFunction_t)(CUfunction *, CUmodule, const char *);
typedef CUresult (*cuMemAlloc_t)(CUdeviceptr *, size_t);
typedef CUresult (*cuMemcpyHtoD_t)(CUdeviceptr, const void *, size_t);
typedef CUresult (*cuMemcpyDtoH_t)(void *, CUdeviceptr, size_t);
typedef CUresult (*cuLaunchKernel_t)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned,
                                     unsigned, unsigned, void *, void **, void **);
typedef CUresult (*cuCtxSynchronize_t)(void);

int main(int argc, char **argv) {
    unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], 0, 10) : 1048576u;
    void *h = dlopen("libcuda.so.1", RTLD_NOW);
    if (!h) { printf("cudaprobe: dlopen libcuda.so.1 failed: %s\n", dlerror()); return 2; }
    LOAD(cuInit, "cuInit") LOAD(cuDriverGetVersion, "cuDriverGetVersion")
    LOAD(cuDeviceGetCount, "cuDeviceGetCount") LOAD(cuDeviceGet, "cuDeviceGet")
    LOAD(cuDeviceGetName, "cuDeviceGetName") LOAD(cuCtxCreate, "cuCtxCreate_v2")
    LOAD(cuModuleLoadData, "cuModuleLoadData") LOAD(cuModuleGetFunction, "cuModuleGetFunction")
    LOAD(cuMemAlloc, "cuMemAlloc_v2") LOAD(cuMemcpyHtoD, "cuMemcpyHtoD_v2")
    LOAD(cuMemcpyDtoH, "cuMemcpyDtoH_v2") LOAD(cuLaunchKernel, "cuLaunchKernel")
    LOAD(cuCtxSynchronize, "cuCtxSynchronize")
    int ver = 0, count = 0;
    CHECK(cuInit(0));
    CHECK(cuDriverGetVersion(&ver));
    CHECK(cuDeviceGetCount(&count));
    CUdevice dev; char name[128] = {0};
    CHECK(cuDeviceGet(&dev, 0));
    CHECK(cuDeviceGetName(name, sizeof name, dev));
    CUcontext ctx; CUmodule mod; CUfunction fn;
    CHECK(cuCtxCreate(&ctx, 0, dev));
    CHECK(cuModuleLoadData(&mod, PTX));
    CHECK(cuModuleGetFunction(&fn, mod, "k"));
    uint32_t *in = malloc(n * 4u), *out = malloc(n * 4u);
    for (unsigned i = 0; i < n; i++) { in[i] = i * 2654435761u; out[i] = 0xdeadbeef; }
    CUdeviceptr din, dout;
    CHECK(cuMemAlloc(&din, n * 4u));
    CHECK(cuMemAlloc(&dout, n * 4u));
    CHECK(cuMemcpyHtoD(din, in, n * 4u));
    CHECK(cuMemcpyHtoD(dout, out, n * 4u));
    void *args[] = {&dout, &din, &n};
    CHECK(cuLaunchKernel(fn, (n + 255) / 256, 1, 1, 256, 1, 1, 0, 0, args, 0));
    CHECK(cuCtxSynchronize());
    CHECK(cuMemcpyDtoH(out, dout, n * 4u));
    unsigned bad = 0;
    for (unsigned i = 0; i < n; i++)
        if (out[i] != in[i] * 3u + i) bad++;
    printf("cudaprobe: driver API %d.%d, %d device(s), device 0 \"%s\": %u/%u results verified\n",
           ver / 1000, (ver % 1000) / 10, count, name, n - bad, n);
    return bad ? 5 : 0;
}
