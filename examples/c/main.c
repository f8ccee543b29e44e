/*
 * pytorch-saver from plain C: open a checkpoint, list its tensors, rebuild
 * its model by name and run it on a buffer.
 *
 *   cc -std=c99 main.c $(pkg-config --cflags --libs pytorch_saver) -o example
 *   ./example tests/golden/v1/rust_mlp_inference.zip
 */
#include <stdio.h>
#include <stdlib.h>

#include "pytorch_saver.h"

/* Prints the error, frees it and leaves. */
static void check(pts_error_t *err) {
  if (err != NULL) {
    fprintf(stderr, "error %u: %s\n", pts_error_code(err), pts_error_message(err));
    pts_error_free(err);
    exit(1);
  }
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CHECKPOINT.zip (an MLP checkpoint)\n", argv[0]);
    return 2;
  }

  /* 1. Read the file without building anything. */
  pts_checkpoint_t *ckpt = NULL;
  check(pts_checkpoint_open(argv[1], &ckpt));
  const char *metadata = NULL; /* borrowed from ckpt */
  check(pts_checkpoint_metadata(ckpt, &metadata));
  printf("metadata: %s\n", metadata);

  size_t count = 0;
  check(pts_checkpoint_tensor_count(ckpt, PTS_MEMBER_MODEL, &count));
  for (size_t i = 0; i < count; i++) {
    const char *name = NULL;
    pts_dtype_t dtype = 0;
    const int64_t *shape = NULL;
    size_t ndim = 0, nbytes = 0;
    check(pts_checkpoint_tensor_name(ckpt, PTS_MEMBER_MODEL, i, &name));
    check(pts_checkpoint_tensor_info(ckpt, PTS_MEMBER_MODEL, name, &dtype, &shape, &ndim, &nbytes));
    printf("  %-24s dtype %u, %zu dims, %zu bytes\n", name, dtype, ndim, nbytes);
  }

  /* The MLP's input width is fc1.weight's second dimension. */
  pts_dtype_t dtype = 0;
  const int64_t *w_shape = NULL;
  size_t ndim = 0, nbytes = 0;
  check(pts_checkpoint_tensor_info(ckpt, PTS_MEMBER_MODEL, "fc1.weight", &dtype, &w_shape, &ndim,
                                   &nbytes));
  int64_t in_dim = w_shape[1];
  pts_checkpoint_free(ckpt);

  /* 2. Rebuild the model by its class name (the built-in registry) and run it. */
  pts_container_t *container = NULL;
  char *flat_metadata = NULL; /* ours to free */
  check(pts_container_load(NULL, argv[1], &container, &flat_metadata));
  pts_string_free(flat_metadata);

  float *input = calloc((size_t)in_dim, sizeof(float));
  for (int64_t i = 0; i < in_dim; i++) input[i] = 0.5f;
  int64_t shape[2] = {1, in_dim};
  pts_tensor_t *x = NULL, *y = NULL;
  check(pts_tensor_from_buffer(PTS_DTYPE_F32, shape, 2, input, (size_t)in_dim * sizeof(float), &x));
  check(pts_container_forward(container, x, false, &y));

  size_t out_bytes = 0;
  check(pts_tensor_nbytes(y, &out_bytes));
  float *output = malloc(out_bytes);
  check(pts_tensor_copy_to_buffer(y, output, out_bytes));
  printf("forward(0.5 x %lld) =", (long long)in_dim);
  for (size_t i = 0; i < out_bytes / sizeof(float); i++) printf(" %g", output[i]);
  printf("\n");

  free(output);
  free(input);
  pts_tensor_free(y);
  pts_tensor_free(x);
  pts_container_free(container);
  return 0;
}
