/* The io_uring I/O backend (placeholder until the next commit). */
#include <stdio.h>

#include "io.h"

static mf_io *ur_create(const mf_io_handler *h, void *ctx, char *why, size_t why_len)
{
    snprintf(why, why_len, "not built");
    return NULL;
}

const mf_io_ops mf_io_uring = {.name = "io_uring", .create = ur_create};
