/*
 * The C side of Go model factories (callbacks.c): registration helpers
 * that hand the library a cgo.Handle as user data. The handle travels as
 * an integer turned into void * here in C, so that Go never holds a
 * pointer made from an integer.
 */
#ifndef PYTORCH_SAVER_GO_CALLBACKS_H
#define PYTORCH_SAVER_GO_CALLBACKS_H

#include <pytorch_saver.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* pts_registry_register_model with the Go factory trampoline; `factory`
 * is a cgo.Handle, released (deleted) by the library's finalizer call. */
pts_error_t *ptsgo_register_model(pts_registry_t *registry, const char *name, uintptr_t factory);

/* pts_model_builder_set_forward with the Go forward trampoline;
 * `instance` is a cgo.Handle, released as above. */
pts_error_t *ptsgo_set_forward(pts_model_builder_t *builder, uintptr_t instance);

/* pts_container_track with the Go trampolines of a tracked object;
 * `object` is a cgo.Handle, released as above. */
pts_error_t *ptsgo_track(pts_container_t *container, const char *name, const char *class_name,
                         uintptr_t object);

/* pts_load_options_set_progress and pts_container_set_save_progress
 * with the Go progress trampoline; `relay` is a cgo.Handle, released as
 * above. */
pts_error_t *ptsgo_load_options_set_progress(pts_load_options_t *options, uintptr_t relay);
pts_error_t *ptsgo_container_set_save_progress(pts_container_t *container, uintptr_t relay);

/* pts_registry_register_optimizer with the Go step (and, when
 * `check_group`, group check) trampolines and the class's declarations;
 * `cls` is a cgo.Handle, released as above. */
pts_error_t *ptsgo_register_optimizer(pts_registry_t *registry, const char *name,
                                      const char *hyperparameters_json,
                                      const pts_optim_state_key_t *state_keys, size_t n_state_keys,
                                      bool check_group, uintptr_t cls);

/* pts_container_step_closure with the Go closure trampoline; `closure`
 * is a cgo.Handle the caller keeps (and deletes) for the call. */
pts_error_t *ptsgo_step_closure(pts_container_t *container, uintptr_t closure, double *loss);

#endif
