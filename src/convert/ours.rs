//! Files of this format (any version, any kind) as conversion input: the
//! validated file's tensors over a read-only mapping, its classes, its
//! optimizer and scheduler state and its user metadata. Extra training
//! state (RNG, scaler) has no place in the other targets and is not
//! carried.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use memmap2::Mmap;
use serde_json::{Map, Value};

use super::{
    foreign, Contents, ForeignOptimizer, ForeignScheduler, ForeignTensor, RecordedKwargs, SourceKind, TensorBytes,
};
use crate::error::Result;
use crate::format::{Checkpoint, ClassSpec, MemberName, TensorEntry};

/// Reads a file of this format.
pub(crate) fn read_checkpoint_file(path: &Path) -> Result<Contents> {
    let ckpt = Checkpoint::open(path)?;
    // The checkpoint's own mapping is private and writable; a second,
    // read-only one of the same (validated) file serves the tensors.
    let file = File::open(path).map_err(|e| foreign(path, format!("cannot open: {e}")))?;
    // SAFETY: a read-only mapping of a file that is written once and never
    // changed in place (as every mapping reader, see Checkpoint).
    let map = unsafe { Mmap::map(&file) }.map_err(|e| foreign(path, format!("cannot map: {e}")))?;
    if map.len() != ckpt.private_mapping().len() {
        return Err(foreign(path, "the file changed while it was read"));
    }
    let map = Arc::new(map);
    let tensor = |name: String, e: &TensorEntry| ForeignTensor {
        name,
        dtype: e.dtype,
        shape: e.shape.clone(),
        data: TensorBytes::Mapped {
            map: map.clone(),
            start: e.start as usize,
            end: e.end as usize,
        },
    };
    let meta = ckpt.metadata();
    // The member's data order is the file's order.
    let model = ckpt
        .tensors(MemberName::Model)
        .iter()
        .map(|e| tensor(e.name.clone(), e))
        .collect();
    let optimizer = match &meta.optimizer {
        None => None,
        Some(o) => {
            let mut state: BTreeMap<usize, (Vec<ForeignTensor>, Map<String, Value>)> = o
                .state
                .iter()
                .map(|(&i, plain)| (i, (Vec::new(), plain.clone())))
                .collect();
            for e in ckpt.tensors(MemberName::Optimizer) {
                let (index, key) = o
                    .check_tensor_name(&e.name)
                    .map_err(|reason| foreign(path, format!("optimizer tensor {:?}: {reason}", e.name)))?;
                let entry = state.get_mut(&index).expect("check_tensor_name found the index");
                entry.0.push(tensor(key.to_owned(), e));
            }
            Some(ForeignOptimizer {
                class: Some(ClassSpec::new(o.class.clone(), o.kwargs.clone())),
                param_groups: o
                    .param_groups
                    .iter()
                    .map(|g| {
                        let mut m = g.options.clone();
                        m.insert("params".into(), g.params.iter().map(|&i| Value::from(i)).collect());
                        m
                    })
                    .collect(),
                state,
                param_names: Some(o.param_names.clone()),
            })
        }
    };
    let scheduler = meta.scheduler.as_ref().map(|s| ForeignScheduler {
        class: Some(ClassSpec::new(s.class.clone(), s.kwargs.clone())),
        state: s.state.clone(),
    });
    Ok(Contents {
        source: SourceKind::PytorchSaver,
        model,
        model_class: meta.model.clone(),
        optimizer,
        scheduler,
        user: meta.user.clone(),
        recorded_kwargs: RecordedKwargs::default(),
        timestamp: Some(meta.timestamp),
    })
}
