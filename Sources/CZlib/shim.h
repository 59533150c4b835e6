#ifndef SHOAL_CZLIB_SHIM_H
#define SHOAL_CZLIB_SHIM_H
#include <zlib.h>

// deflateInit2/inflateInit2 are macros; Swift sees functions.
static inline int shoal_deflate_init_gzip(z_streamp stream, int level) {
    return deflateInit2(stream, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY);
}

// 15 + 32: accept gzip or zlib headers.
static inline int shoal_inflate_init_gzip(z_streamp stream) {
    return inflateInit2(stream, 15 + 32);
}
#endif
