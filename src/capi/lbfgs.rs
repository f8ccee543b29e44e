//! Steps whose closure re-evaluates the loss (LBFGS) from C: the closure
//! as a callback with user data (a C closure sets gradients with
//! `pts_tensor_set_grad`, C having no autograd of its own).

use std::ffi::c_void;

use super::*;
use crate::error::Error;
use crate::optim::Optimizer;

/// The closure of `pts_container_step_closure`: zero the gradients (for
/// example `pts_tensor_set_grad(param, NULL)`), compute the loss, set the
/// gradients (a backward pass, or `pts_tensor_set_grad`), write the loss
/// to `*loss` and return NULL; or return an error object, which ends the
/// step and is returned to the step's caller as it is (same object).
pub type pts_closure_t = Option<unsafe extern "C" fn(user_data: *mut c_void, loss: *mut f64) -> *mut pts_error_t>;

/// The optimizer lent out of a container for the length of a step, put
/// back when dropped (also when the step unwinds).
struct Lent {
    container: *mut pts_container_t,
    optimizer: Option<Optimizer>,
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(optimizer) = self.optimizer.take() {
            // SAFETY: the container outlives the call that lent it, and no
            // other reference into it is live when the step ends.
            unsafe { (*self.container).inner.lend_back(optimizer) };
        }
    }
}

/// `optimizer.step(closure)`: LBFGS calls `closure(user_data, &loss)` as
/// often as its iterations and line search need (with grad mode enabled);
/// any other optimizer calls it once, then steps. `*out_loss` is the loss
/// of the first call. While the step runs the container has lent its
/// optimizer to it: the callback may run `pts_container_forward`, read
/// `pts_container_parameter` and set gradients, and a call that needs the
/// optimizer (`pts_container_step`, `pts_container_zero_grad`, ...) fails
/// with `PTS_ERROR_USAGE`. An error the callback returns comes back from
/// this call unchanged; the parameters are then as the step left them.
#[no_mangle]
pub unsafe extern "C" fn pts_container_step_closure(
    container: *mut pts_container_t,
    closure: pts_closure_t,
    user_data: *mut c_void,
    out_loss: *mut f64,
) -> *mut pts_error_t {
    boundary(|| {
        let c = unsafe { arg_mut(container, "container") }?;
        let closure = closure.ok_or_else(|| pts_error_t::new(PTS_ERROR_NULL_ARGUMENT, "argument closure is NULL"))?;
        let out = Out::new(out_loss, "out_loss")?;
        let optimizer = c.inner.lend_optimizer()?;
        // From here on no reference into the container is held: the
        // callback may use it.
        let mut lent = Lent {
            container,
            optimizer: Some(optimizer),
        };
        let mut failed: Option<Box<pts_error_t>> = None;
        let result = lent.optimizer.as_mut().expect("lent above").step_with_closure(&mut || {
            let mut loss = f64::NAN;
            // SAFETY: a function pointer and user data the caller vouches
            // for (header contract); `loss` is a valid out pointer.
            let error = unsafe { closure(user_data, &mut loss) };
            if error.is_null() {
                return Ok(loss);
            }
            // SAFETY: an error object the callback hands over, owned from here.
            failed = Some(unsafe { Box::from_raw(error) });
            Err(Error::Callback {
                what: "the step's closure".into(),
                message: "returned an error".into(),
            })
        });
        drop(lent);
        if let Some(error) = failed {
            return Err(error);
        }
        out.write(result?);
        Ok(())
    })
}
