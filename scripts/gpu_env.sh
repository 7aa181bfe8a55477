# Sourced (from the project root) by the scripts that run on the GPU
# machine: the libraries it lacks, carried as .devdeps
# (../shared/device/fetch-debs.sh), unpacked and put on the search paths,
# nvcc on PATH, and NCCL's NVLink multicast off (the machines' rule).
# shellcheck shell=bash
if [ -f .devdeps/unpack.sh ]; then
  # shellcheck disable=SC1091
  source .devdeps/unpack.sh
  # OpenBLAS's Debian package keeps its files under openblas-pthread/ and
  # its .pc file names absolute /usr paths: point them at the unpacked copy.
  ob=/opt/devdeps/usr/lib/x86_64-linux-gnu/openblas-pthread
  if ! pkg-config --exists openblas cblas 2>/dev/null && [ -f "$ob/pkgconfig/openblas.pc" ]; then
    sed -i "s|=/usr/|=/opt/devdeps/usr/|" "$ob/pkgconfig/openblas.pc"
    export PKG_CONFIG_PATH=$ob/pkgconfig:${PKG_CONFIG_PATH:-} LD_LIBRARY_PATH=$ob:${LD_LIBRARY_PATH:-}
  fi
fi
export PATH=$PATH:/usr/local/cuda/bin NCCL_NVLS_ENABLE=0
