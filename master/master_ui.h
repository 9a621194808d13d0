/*
 * master_ui.h - (prefix mui_) the files of the master's browser pages (master/ui/: HTML, CSS,
 * JavaScript, no framework and nothing fetched from elsewhere), built into rlhf-master by
 * cmake/embed_ui.cmake so that the binary serves them on any host without an install tree.
 */
#ifndef RLHF_MASTER_UI_H
#define RLHF_MASTER_UI_H

#include <stddef.h>

typedef struct {
    const char *name; /* the file name in master/ui/ ("annotate.html") */
    const char *type; /* its Content-Type */
    const unsigned char *data;
    size_t len;
} mui_asset_t;

/* The file called name, or NULL. */
const mui_asset_t *mui_asset_find(const char *name);

#endif
