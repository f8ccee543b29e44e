//! A restricted pickle reader: a small machine over the opcodes of
//! protocols 2 to 5 that builds plain values, containers and tensor
//! descriptions, and calls nothing.
//!
//! Globals are resolved against an allow-list ([`Profile`]): a name off the
//! list is refused with [`Error::UnsafePickle`] at the opcode that names it.
//! The few allowed callables (`OrderedDict`, `Counter`, torch's tensor and
//! parameter rebuilders, `torch.storage._load_from_bytes`) are interpreted
//! here, never imported. Storage classes only mark storages in persistent
//! ids.
//!
//! Memory: every object lives in an [`Arena`] and values refer to it by
//! index, so nothing nests in Rust memory (no recursive drop a hostile file
//! can overflow), the memo grows one entry per opcode at most, and every
//! length is checked against the bytes left before anything is allocated.

use std::cell::Cell;
use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, Result};
use crate::format::{dtype_size, Dtype};

/// Index of an object in the [`Arena`].
pub(crate) type ObjId = usize;

/// Deepest tuple used as a dict key, and most dimensions of a tensor.
const MAX_KEY_DEPTH: usize = 64;
const MAX_DIMS: usize = 64;

/// A pickled value. Containers, tensors and storages live in the
/// [`Arena`]; strings and bytes borrow the pickle's data.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// An integer beyond 64 bits (up to 128), as the magic number of
    /// torch's legacy format; refused wherever a value is used as data.
    Long(i128),
    Float(f64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Obj(ObjId),
    Global(Global<'a>),
}

/// An allowed global.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Global<'a> {
    OrderedDict,
    Counter,
    RebuildTensorV2,
    RebuildTensorV3,
    RebuildParameter,
    LoadFromBytes,
    /// `torch.FloatStorage`, ...: marks a storage's element type.
    StorageType(ElementType<'a>),
    /// `torch.float32`, ...: a dtype, as `_rebuild_tensor_v3` takes it.
    Dtype(ElementType<'a>),
}

/// The element type of a storage or tensor: one of the format's, or
/// another of torch's (refused where the tensor is named).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ElementType<'a> {
    Known(Dtype),
    /// The global's `module.name`.
    Unsupported(&'a str, &'a str),
}

/// Which dict a [`Dict`] stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DictKind {
    Plain,
    Ordered,
    Counter,
}

/// An object of the arena.
#[derive(Debug)]
pub(crate) enum Obj<'a> {
    List(Vec<Value<'a>>),
    Tuple(Vec<Value<'a>>),
    Dict(Dict<'a>),
    Storage(Storage<'a>),
    Tensor(Tensor<'a>),
}

/// A dict (plain, `OrderedDict` or `Counter`) in insertion order.
#[derive(Debug)]
pub(crate) struct Dict<'a> {
    pub kind: DictKind,
    pub entries: Vec<(Value<'a>, Value<'a>)>,
    index: HashMap<Key<'a>, usize>,
}

/// A storage named by a persistent id (or built by `_load_from_bytes`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Storage<'a> {
    pub element: ElementType<'a>,
    /// The key its bytes are found under (a zip member's name, an entry
    /// of the legacy format's storage list).
    pub key: &'a str,
    /// Elements, as the persistent id declares them.
    pub numel: u64,
    /// Its bytes, once known (the legacy format's storages).
    pub data: Option<&'a [u8]>,
}

impl Storage<'_> {
    /// Bytes the storage declares, when its element size is known.
    pub fn nbytes(&self) -> Option<u64> {
        match self.element {
            ElementType::Known(d) => self.numel.checked_mul(dtype_size(d) as u64),
            ElementType::Unsupported(..) => None,
        }
    }
}

/// A tensor: a strided view of a storage, in elements.
#[derive(Debug, Clone)]
pub(crate) struct Tensor<'a> {
    pub storage: ObjId,
    pub element: ElementType<'a>,
    pub offset: u64,
    pub size: Vec<u64>,
    pub stride: Vec<u64>,
}

/// What a dict key is for equality: Python's (`1 == 1.0 == True`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key<'a> {
    None,
    Int(i128),
    Float(u64),
    Str(&'a str),
    Bytes(&'a [u8]),
    Tuple(Vec<Key<'a>>),
}

/// The objects of one file's pickles.
#[derive(Debug, Default)]
pub(crate) struct Arena<'a> {
    objs: Vec<Obj<'a>>,
    /// The storages of the pickle being read, by key (each pickle of
    /// torch's legacy format has keys of its own).
    pub(crate) storages: HashMap<&'a str, ObjId>,
    /// Storages already parsed by `_load_from_bytes`, by the position and
    /// length of their bytes: bytes reused through the memo are parsed once.
    pub(crate) loaded: HashMap<(usize, usize), ObjId>,
    /// Values that reading the objects may still visit: shared containers
    /// (one list referenced twice through the memo, at each of 64 levels)
    /// would otherwise expand to far more values than the pickle has
    /// bytes. Each pickle read adds twice the bytes it may span.
    budget: Cell<u64>,
}

impl<'a> Arena<'a> {
    /// Takes one value from the budget of values to visit; `false` once it
    /// is spent.
    pub fn visit(&self) -> bool {
        let left = self.budget.get();
        self.budget.set(left.saturating_sub(1));
        left > 0
    }

    pub fn get(&self, id: ObjId) -> &Obj<'a> {
        &self.objs[id]
    }

    fn push(&mut self, obj: Obj<'a>) -> ObjId {
        self.objs.push(obj);
        self.objs.len() - 1
    }

    pub fn storage(&self, id: ObjId) -> Option<&Storage<'a>> {
        match &self.objs[id] {
            Obj::Storage(s) => Some(s),
            _ => None,
        }
    }

    pub fn storage_mut(&mut self, id: ObjId) -> Option<&mut Storage<'a>> {
        match &mut self.objs[id] {
            Obj::Storage(s) => Some(s),
            _ => None,
        }
    }
}

/// What a pickle may name and hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Profile {
    /// Plain values only (the small pickles of torch's legacy format).
    Plain,
    /// `data.pkl` of a `torch.save` archive: containers, tensors, and
    /// storages as 5-tuple persistent ids.
    TorchZip,
    /// The object pickle of torch's legacy format as a whole file:
    /// containers, tensors, storages as 6-tuple persistent ids.
    TorchLegacy,
    /// The object pickle of a storage's pickled form (legacy format): one
    /// storage as a 6-tuple persistent id.
    LegacyStorage,
    /// `state_dicts.pkl` of the original package: containers, tensors,
    /// storages through `torch.storage._load_from_bytes`; no persistent id.
    Package01,
}

impl Profile {
    fn containers(self) -> bool {
        matches!(self, Profile::TorchZip | Profile::TorchLegacy | Profile::Package01)
    }

    fn storage_types(self) -> bool {
        matches!(self, Profile::TorchZip | Profile::TorchLegacy | Profile::LegacyStorage)
    }

    /// Elements of a persistent id, when the profile takes them.
    fn persistent_id_len(self) -> Option<usize> {
        match self {
            Profile::TorchZip => Some(5),
            Profile::TorchLegacy | Profile::LegacyStorage => Some(6),
            Profile::Plain | Profile::Package01 => None,
        }
    }
}

/// Parses a storage's pickled form (for `_load_from_bytes`) into the arena.
pub(crate) type LoadFromBytes<'f, 'a> = &'f dyn Fn(&'a [u8], &mut Arena<'a>) -> Result<ObjId>;

/// Where a pickle is and what it may do.
pub(crate) struct Context<'f, 'a> {
    pub file: &'f Path,
    /// The pickle, as errors name it (`archive/data.pkl`).
    pub what: &'f str,
    pub profile: Profile,
    pub load_from_bytes: Option<LoadFromBytes<'f, 'a>>,
}

/// Runs the pickle that starts at `data[start..]`; returns the value and
/// the position after its STOP.
pub(crate) fn load<'a>(
    arena: &mut Arena<'a>,
    data: &'a [u8],
    start: usize,
    cx: &Context<'_, 'a>,
) -> Result<(Value<'a>, usize)> {
    let left = (data.len() - start) as u64;
    arena.budget.set(arena.budget.get().saturating_add(2 * left + 64));
    let mut m = Machine {
        arena,
        cx,
        data,
        pos: start,
        op_pos: start,
        stack: Vec::new(),
        marks: Vec::new(),
        memo: Vec::new(),
    };
    let value = m.run()?;
    Ok((value, m.pos))
}

struct Machine<'m, 'f, 'a> {
    arena: &'m mut Arena<'a>,
    cx: &'m Context<'f, 'a>,
    data: &'a [u8],
    pos: usize,
    op_pos: usize,
    stack: Vec<Value<'a>>,
    marks: Vec<usize>,
    memo: Vec<Value<'a>>,
}

impl<'a> Machine<'_, '_, 'a> {
    fn error(&self, reason: impl std::fmt::Display) -> Error {
        super::foreign(
            self.cx.file,
            format!("{}: byte {}: {reason}", self.cx.what, self.op_pos),
        )
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(self.error(format!("needs {n} bytes, {left} left: the pickle is truncated")));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn le<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64)?);
        Ok(out)
    }

    fn line(&mut self) -> Result<&'a str> {
        let rest = &self.data[self.pos..];
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| self.error("a line without its end: the pickle is truncated"))?;
        let line = &rest[..n];
        self.pos += n + 1;
        std::str::from_utf8(line).map_err(|_| self.error("a name that is not UTF-8"))
    }

    fn text(&mut self, n: u64) -> Result<&'a str> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes).map_err(|_| self.error("a string that is not UTF-8"))
    }

    fn pop(&mut self) -> Result<Value<'a>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.error("pops an empty stack"));
        }
        Ok(self.stack.pop().expect("checked above"))
    }

    fn top(&self) -> Result<Value<'a>> {
        let floor = self.marks.last().copied().unwrap_or(0);
        if self.stack.len() <= floor {
            return Err(self.error("reads an empty stack"));
        }
        Ok(self.stack[self.stack.len() - 1])
    }

    fn pop_mark(&mut self) -> Result<Vec<Value<'a>>> {
        let mark = self.marks.pop().ok_or_else(|| self.error("no MARK to pop to"))?;
        Ok(self.stack.split_off(mark))
    }

    fn new_obj(&mut self, obj: Obj<'a>) -> Value<'a> {
        Value::Obj(self.arena.push(obj))
    }

    fn new_dict(&mut self, kind: DictKind) -> Value<'a> {
        self.new_obj(Obj::Dict(Dict {
            kind,
            entries: Vec::new(),
            index: HashMap::new(),
        }))
    }

    fn memo_put(&mut self, index: u64) -> Result<()> {
        let value = self.top()?;
        let len = self.memo.len() as u64;
        if index > len {
            return Err(self.error(format!("memo index {index} out of sequence ({len} entries)")));
        }
        if index == len {
            self.memo.push(value);
        } else {
            self.memo[index as usize] = value;
        }
        Ok(())
    }

    fn memo_get(&mut self, index: u64) -> Result<()> {
        let value = usize::try_from(index)
            .ok()
            .and_then(|i| self.memo.get(i))
            .copied()
            .ok_or_else(|| self.error(format!("memo index {index} was never stored")))?;
        self.stack.push(value);
        Ok(())
    }

    fn run(&mut self) -> Result<Value<'a>> {
        loop {
            self.op_pos = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if !(2..=5).contains(&proto) {
                        return Err(self.error(format!("pickle protocol {proto}: only 2 to 5 are read")));
                    }
                }
                0x95 => {
                    // FRAME: a length hint; the bytes must be there.
                    let n = u64::from_le_bytes(self.le()?);
                    let left = (self.data.len() - self.pos) as u64;
                    if n > left {
                        return Err(self.error(format!("a frame of {n} bytes, {left} left")));
                    }
                }
                b'.' => {
                    let value = self.pop()?;
                    if !self.stack.is_empty() || !self.marks.is_empty() {
                        return Err(self.error("STOP with values left on the stack"));
                    }
                    return Ok(value);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v as i64));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v as i64));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.le()?);
                    self.stack.push(Value::Int(v as i64));
                }
                0x8a => {
                    let n = self.u8()? as u64;
                    let v = self.long(n)?;
                    self.stack.push(v);
                }
                0x8b => {
                    let n = u32::from_le_bytes(self.le()?) as u64;
                    let v = self.long(n)?;
                    self.stack.push(v);
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.le()?);
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = u32::from_le_bytes(self.le()?) as u64;
                    let s = self.text(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8c => {
                    let n = self.u8()? as u64;
                    let s = self.text(n)?;
                    self.stack.push(Value::Str(s));
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.le()?);
                    let s = self.text(n)?;
                    self.stack.push(Value::Str(s));
                }
                b'B' => {
                    let n = u32::from_le_bytes(self.le()?) as u64;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(b));
                }
                b'C' => {
                    let n = self.u8()? as u64;
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(b));
                }
                0x8e => {
                    let n = u64::from_le_bytes(self.le()?);
                    let b = self.take(n)?;
                    self.stack.push(Value::Bytes(b));
                }
                b']' => {
                    let v = self.new_obj(Obj::List(Vec::new()));
                    self.stack.push(v);
                }
                b'l' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::List(items));
                    self.stack.push(v);
                }
                b'a' => {
                    let item = self.pop()?;
                    let list = self.top()?;
                    self.extend(list, vec![item])?;
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let list = self.top()?;
                    self.extend(list, items)?;
                }
                b')' => {
                    let v = self.new_obj(Obj::Tuple(Vec::new()));
                    self.stack.push(v);
                }
                b't' => {
                    let items = self.pop_mark()?;
                    let v = self.new_obj(Obj::Tuple(items));
                    self.stack.push(v);
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.pop()?);
                    }
                    items.reverse();
                    let v = self.new_obj(Obj::Tuple(items));
                    self.stack.push(v);
                }
                b'}' => {
                    let v = self.new_dict(DictKind::Plain);
                    self.stack.push(v);
                }
                b'd' => {
                    let items = self.pop_mark()?;
                    let v = self.new_dict(DictKind::Plain);
                    self.set_items(v, items)?;
                    self.stack.push(v);
                }
                b's' => {
                    let value = self.pop()?;
                    let key = self.pop()?;
                    let dict = self.top()?;
                    self.set_items(dict, vec![key, value])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    let dict = self.top()?;
                    self.set_items(dict, items)?;
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?;
                    self.stack.push(v);
                }
                b'h' => {
                    let i = self.u8()? as u64;
                    self.memo_get(i)?;
                }
                b'j' => {
                    let i = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_get(i)?;
                }
                b'q' => {
                    let i = self.u8()? as u64;
                    self.memo_put(i)?;
                }
                b'r' => {
                    let i = u32::from_le_bytes(self.le()?) as u64;
                    self.memo_put(i)?;
                }
                0x94 => {
                    let i = self.memo.len() as u64;
                    self.memo_put(i)?;
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = self.global(module, name)?;
                    self.stack.push(Value::Global(g));
                }
                b'i' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    self.global(module, name)?;
                    return Err(self.error(format!("INST of {module}.{name} is not supported")));
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err(self.error("STACK_GLOBAL of values that are not two strings"));
                    };
                    let g = self.global(module, name)?;
                    self.stack.push(Value::Global(g));
                }
                0x82..=0x84 => {
                    return Err(Error::UnsafePickle {
                        file: self.cx.file.to_path_buf(),
                        global: "an extension-registry code (EXT1/EXT2/EXT4)".into(),
                    });
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let v = self.persistent_id(pid)?;
                    self.stack.push(v);
                }
                b'R' => {
                    let args = self.pop()?;
                    let callable = self.pop()?;
                    let v = self.reduce(callable, args)?;
                    self.stack.push(v);
                }
                0x81 => {
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(cls, args, None)?;
                    self.stack.push(v);
                }
                0x92 => {
                    let kwargs = self.pop()?;
                    let args = self.pop()?;
                    let cls = self.pop()?;
                    let v = self.new_object(cls, args, Some(kwargs))?;
                    self.stack.push(v);
                }
                b'b' => {
                    let state = self.pop()?;
                    let target = self.top()?;
                    self.build(target, state)?;
                }
                other => {
                    return Err(self.error(format!(
                        "opcode {} is not read (only the binary opcodes of protocols 2 to 5 that \
                         state dicts use)",
                        opcode_name(other)
                    )))
                }
            }
        }
    }

    fn long(&mut self, n: u64) -> Result<Value<'a>> {
        if n > 16 {
            return Err(self.error(format!("an integer of {n} bytes: at most 16 are read")));
        }
        let bytes = self.take(n)?;
        if bytes.is_empty() {
            return Ok(Value::Int(0));
        }
        let negative = bytes[bytes.len() - 1] & 0x80 != 0;
        let mut buf = [if negative { 0xff } else { 0 }; 16];
        buf[..bytes.len()].copy_from_slice(bytes);
        let v = i128::from_le_bytes(buf);
        Ok(match i64::try_from(v) {
            Ok(small) => Value::Int(small),
            Err(_) => Value::Long(v),
        })
    }

    fn global(&self, module: &'a str, name: &'a str) -> Result<Global<'a>> {
        let profile = self.cx.profile;
        let tensors = profile.containers();
        let found = match (module, name) {
            ("collections", "OrderedDict") if tensors => Some(Global::OrderedDict),
            ("collections", "Counter") if tensors => Some(Global::Counter),
            ("torch._utils", "_rebuild_tensor_v2") if tensors => Some(Global::RebuildTensorV2),
            ("torch._utils", "_rebuild_tensor_v3") if tensors => Some(Global::RebuildTensorV3),
            ("torch._utils", "_rebuild_parameter") if tensors => Some(Global::RebuildParameter),
            ("torch.storage", "_load_from_bytes") if profile == Profile::Package01 => Some(Global::LoadFromBytes),
            _ if profile.storage_types() && storage_type(module, name).is_some() => {
                storage_type(module, name).map(Global::StorageType)
            }
            _ if tensors => dtype_global(module, name).map(Global::Dtype),
            _ => None,
        };
        found.ok_or_else(|| Error::UnsafePickle {
            file: self.cx.file.to_path_buf(),
            global: format!("{module}.{name}"),
        })
    }

    fn extend(&mut self, list: Value<'a>, items: Vec<Value<'a>>) -> Result<()> {
        match list {
            Value::Obj(id) => match &mut self.arena.objs[id] {
                Obj::List(v) => {
                    v.extend(items);
                    Ok(())
                }
                _ => Err(self.error("APPEND to something that is not a list")),
            },
            _ => Err(self.error("APPEND to something that is not a list")),
        }
    }

    fn key(&self, value: Value<'a>, depth: usize) -> Result<Key<'a>> {
        if depth > MAX_KEY_DEPTH {
            return Err(self.error("a dict key nested too deeply"));
        }
        if !self.arena.visit() {
            return Err(self.error("dict keys of more values than the pickle has bytes"));
        }
        Ok(match value {
            Value::None => Key::None,
            Value::Bool(b) => Key::Int(b as i128),
            Value::Int(i) => Key::Int(i as i128),
            Value::Long(i) => Key::Int(i),
            Value::Float(f) => {
                if f.fract() == 0.0 && f.abs() < 1e30 {
                    Key::Int(f as i128)
                } else {
                    Key::Float(f.to_bits())
                }
            }
            Value::Str(s) => Key::Str(s),
            Value::Bytes(b) => Key::Bytes(b),
            Value::Obj(id) => match &self.arena.objs[id] {
                Obj::Tuple(items) => {
                    let items = items.clone();
                    Key::Tuple(
                        items
                            .into_iter()
                            .map(|v| self.key(v, depth + 1))
                            .collect::<Result<_>>()?,
                    )
                }
                _ => return Err(self.error("a dict key that is not a number, string or tuple")),
            },
            Value::Global(_) => return Err(self.error("a dict key that is a global")),
        })
    }

    fn set_items(&mut self, dict: Value<'a>, items: Vec<Value<'a>>) -> Result<()> {
        if items.len() % 2 != 0 {
            return Err(self.error("SETITEMS with a key but no value"));
        }
        let Value::Obj(id) = dict else {
            return Err(self.error("SETITEM on something that is not a dict"));
        };
        if !matches!(self.arena.objs[id], Obj::Dict(_)) {
            return Err(self.error("SETITEM on something that is not a dict"));
        }
        let mut pairs = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            pairs.push((self.key(k, 0)?, k, v));
        }
        let Obj::Dict(d) = &mut self.arena.objs[id] else {
            unreachable!("checked above")
        };
        for (key, k, v) in pairs {
            match d.index.get(&key) {
                Some(&i) => d.entries[i].1 = v,
                None => {
                    d.index.insert(key, d.entries.len());
                    d.entries.push((k, v));
                }
            }
        }
        Ok(())
    }

    fn tuple(&self, value: Value<'a>) -> Option<&[Value<'a>]> {
        match value {
            Value::Obj(id) => match &self.arena.objs[id] {
                Obj::Tuple(items) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    fn is_empty_dict(&self, value: Value<'a>) -> bool {
        matches!(value, Value::Obj(id) if matches!(&self.arena.objs[id], Obj::Dict(d) if d.entries.is_empty()))
    }

    fn persistent_id(&mut self, pid: Value<'a>) -> Result<Value<'a>> {
        let Some(len) = self.cx.profile.persistent_id_len() else {
            return Err(self.error("a persistent id, which this pickle may not hold"));
        };
        let items = self.tuple(pid).map(<[_]>::to_vec);
        let bad = || self.error(format!("a persistent id that is not a storage of {len} fields"));
        let items = items.filter(|items| items.len() == len).ok_or_else(bad)?;
        let (Value::Str("storage"), Value::Global(Global::StorageType(element)), Value::Str(key), Value::Str(_)) =
            (items[0], items[1], items[2], items[3])
        else {
            return Err(bad());
        };
        let numel = index(items[4]).ok_or_else(bad)?;
        if len == 6 && !matches!(items[5], Value::None) {
            return Err(self.error("storage views are not supported"));
        }
        if let Some(&id) = self.arena.storages.get(key) {
            let s = self.arena.storage(id).expect("storages holds storages");
            if s.element != element || s.numel != numel {
                return Err(self.error(format!("storage {key:?} declared twice, differently")));
            }
            return Ok(Value::Obj(id));
        }
        let id = self.arena.push(Obj::Storage(Storage {
            element,
            key,
            numel,
            data: None,
        }));
        self.arena.storages.insert(key, id);
        Ok(Value::Obj(id))
    }

    fn reduce(&mut self, callable: Value<'a>, args: Value<'a>) -> Result<Value<'a>> {
        let Value::Global(g) = callable else {
            return Err(self.error("REDUCE of something that is not an allowed global"));
        };
        let args = self
            .tuple(args)
            .map(<[_]>::to_vec)
            .ok_or_else(|| self.error("REDUCE with arguments that are not a tuple"))?;
        match g {
            Global::OrderedDict if args.is_empty() => Ok(self.new_dict(DictKind::Ordered)),
            Global::Counter if args.is_empty() => Ok(self.new_dict(DictKind::Counter)),
            Global::Counter if args.len() == 1 => {
                let entries = match args[0] {
                    Value::Obj(id) => match &self.arena.objs[id] {
                        Obj::Dict(d) => Some(d.entries.iter().flat_map(|(k, v)| [*k, *v]).collect::<Vec<_>>()),
                        _ => None,
                    },
                    _ => None,
                };
                let entries = entries.ok_or_else(|| self.error("Counter of something that is not a dict"))?;
                let counter = self.new_dict(DictKind::Counter);
                self.set_items(counter, entries)?;
                Ok(counter)
            }
            Global::RebuildTensorV2 if (6..=7).contains(&args.len()) => {
                let element = match args[0] {
                    Value::Obj(id) => self.arena.storage(id).map(|s| s.element),
                    _ => None,
                };
                let element =
                    element.ok_or_else(|| self.error("a tensor whose storage is not one of the pickle's storages"))?;
                self.rebuild_tensor(&args[..6], args.get(6).copied(), element)
            }
            Global::RebuildTensorV3 if (7..=8).contains(&args.len()) => {
                let Value::Global(Global::Dtype(element)) = args[6] else {
                    return Err(self.error("_rebuild_tensor_v3 without a dtype"));
                };
                self.rebuild_tensor(&args[..6], args.get(7).copied(), element)
            }
            Global::RebuildParameter if args.len() == 3 => {
                let is_tensor = matches!(args[0], Value::Obj(id) if matches!(self.arena.objs[id], Obj::Tensor(_)));
                if !is_tensor {
                    return Err(self.error("a parameter whose data is not a tensor of the pickle"));
                }
                if !matches!(args[1], Value::Bool(_)) || !self.is_empty_dict(args[2]) {
                    return Err(self.error("a parameter with backward hooks or a bad requires_grad"));
                }
                Ok(args[0])
            }
            Global::LoadFromBytes if args.len() == 1 => {
                let Value::Bytes(bytes) = args[0] else {
                    return Err(self.error("_load_from_bytes of something that is not bytes"));
                };
                let parse = self
                    .cx
                    .load_from_bytes
                    .ok_or_else(|| self.error("_load_from_bytes is not allowed here"))?;
                Ok(Value::Obj(parse(bytes, self.arena)?))
            }
            other => Err(self.error(format!("a call of {other:?} with {} arguments", args.len()))),
        }
    }

    fn rebuild_tensor(
        &mut self,
        args: &[Value<'a>],
        metadata: Option<Value<'a>>,
        element: ElementType<'a>,
    ) -> Result<Value<'a>> {
        let storage = match args[0] {
            Value::Obj(id) => self.arena.storage(id).map(|s| (id, *s)),
            _ => None,
        };
        let (storage_id, storage) =
            storage.ok_or_else(|| self.error("a tensor whose storage is not one of the pickle's storages"))?;
        let offset = index(args[1]);
        let size = self.shape(args[2]);
        let stride = self.shape(args[3]);
        let (Some(offset), Some(size), Some(stride)) = (offset, size, stride) else {
            return Err(self.error("a tensor whose offset, size or stride is not made of indices"));
        };
        if size.len() != stride.len() {
            return Err(self.error(format!("a tensor of size {size:?} but stride {stride:?}")));
        }
        if !matches!(args[4], Value::Bool(_)) {
            return Err(self.error("a tensor whose requires_grad is not a bool"));
        }
        if !self.is_empty_dict(args[5]) {
            return Err(self.error("a tensor with backward hooks"));
        }
        if let Some(meta) = metadata {
            let plain = match meta {
                Value::None => true,
                Value::Obj(id) => match &self.arena.objs[id] {
                    Obj::Dict(d) => d.entries.iter().all(|(_, v)| matches!(v, Value::Bool(false))),
                    _ => false,
                },
                _ => false,
            };
            if !plain {
                return Err(self.error("a tensor with metadata (a conjugate or negative bit)"));
            }
        }
        if let (ElementType::Known(d), Some(storage_bytes)) = (element, storage.nbytes()) {
            let item = dtype_size(d) as u64;
            check_view(offset, &size, &stride, item, storage_bytes).map_err(|reason| self.error(reason))?;
        }
        Ok(self.new_obj(Obj::Tensor(Tensor {
            storage: storage_id,
            element,
            offset,
            size,
            stride,
        })))
    }

    fn shape(&self, value: Value<'a>) -> Option<Vec<u64>> {
        let items = self.tuple(value)?;
        if items.len() > MAX_DIMS {
            return None;
        }
        items.iter().map(|v| index(*v)).collect()
    }

    fn new_object(&mut self, cls: Value<'a>, args: Value<'a>, kwargs: Option<Value<'a>>) -> Result<Value<'a>> {
        let kind = match cls {
            Value::Global(Global::OrderedDict) => DictKind::Ordered,
            Value::Global(Global::Counter) => DictKind::Counter,
            _ => return Err(self.error("NEWOBJ of something that is not a dict class")),
        };
        let no_args = self.tuple(args).is_some_and(<[_]>::is_empty);
        if !no_args || kwargs.is_some_and(|k| !self.is_empty_dict(k)) {
            return Err(self.error("NEWOBJ of a dict with arguments"));
        }
        Ok(self.new_dict(kind))
    }

    /// BUILD: only a dict's attributes, and of those only a state dict's
    /// `_metadata` (which is dropped).
    fn build(&mut self, target: Value<'a>, state: Value<'a>) -> Result<()> {
        let is_dict = matches!(target, Value::Obj(id) if matches!(self.arena.objs[id], Obj::Dict(_)));
        if !is_dict {
            return Err(self.error("BUILD on something that is not a dict"));
        }
        let ok = match state {
            Value::None => true,
            Value::Obj(id) => match &self.arena.objs[id] {
                Obj::Dict(d) => d.entries.iter().all(|(k, _)| matches!(k, Value::Str("_metadata"))),
                _ => false,
            },
            _ => false,
        };
        if !ok {
            return Err(self.error("BUILD sets attributes other than a state dict's _metadata"));
        }
        Ok(())
    }
}

/// A non-negative integer below 2^62, as torch's sizes, strides and
/// offsets are.
fn index(v: Value<'_>) -> Option<u64> {
    match v {
        Value::Int(i) if (0..1 << 62).contains(&i) => Some(i as u64),
        _ => None,
    }
}

/// Checks that a view of `size`, `stride` at `offset` (elements of `item`
/// bytes) stays inside a storage of `storage_bytes`, and that it does not
/// have more elements than the storage (an expanded view, whose copy
/// would allocate what the file declares).
pub(crate) fn check_view(
    offset: u64,
    size: &[u64],
    stride: &[u64],
    item: u64,
    storage_bytes: u64,
) -> std::result::Result<(), String> {
    let too_big = || format!("a tensor of size {size:?}, stride {stride:?} at offset {offset}: too large");
    let numel = size
        .iter()
        .try_fold(1u64, |a, &n| a.checked_mul(n))
        .ok_or_else(too_big)?;
    let storage_numel = storage_bytes / item.max(1);
    if numel == 0 {
        if offset > storage_numel {
            return Err(format!("offset {offset} past a storage of {storage_numel} elements"));
        }
        return Ok(());
    }
    let last = size
        .iter()
        .zip(stride)
        .try_fold(offset, |a, (&n, &s)| {
            (n - 1).checked_mul(s).and_then(|x| a.checked_add(x))
        })
        .ok_or_else(too_big)?;
    if last >= storage_numel {
        return Err(format!(
            "a tensor of size {size:?}, stride {stride:?} at offset {offset} reads element {last} of a \
             storage of {storage_numel}"
        ));
    }
    if numel > storage_numel {
        return Err(format!(
            "a tensor of size {size:?} (stride {stride:?}) has more elements than its storage of \
             {storage_numel}: expanded tensors are not supported"
        ));
    }
    Ok(())
}

fn storage_type<'a>(module: &'a str, name: &'a str) -> Option<ElementType<'a>> {
    let known = match (module, name) {
        ("torch", "DoubleStorage") => Dtype::F64,
        ("torch", "FloatStorage") => Dtype::F32,
        ("torch", "HalfStorage") => Dtype::F16,
        ("torch", "BFloat16Storage") => Dtype::BF16,
        ("torch", "LongStorage") => Dtype::I64,
        ("torch", "IntStorage") => Dtype::I32,
        ("torch", "ShortStorage") => Dtype::I16,
        ("torch", "CharStorage") => Dtype::I8,
        ("torch", "ByteStorage") | ("torch", "UntypedStorage") | ("torch.storage", "UntypedStorage") => Dtype::U8,
        ("torch", "BoolStorage") => Dtype::BOOL,
        (
            "torch",
            "ComplexFloatStorage"
            | "ComplexDoubleStorage"
            | "QUInt8Storage"
            | "QInt8Storage"
            | "QInt32Storage"
            | "QUInt4x2Storage"
            | "QUInt2x4Storage",
        ) => return Some(ElementType::Unsupported(module, name)),
        _ => return None,
    };
    Some(ElementType::Known(known))
}

/// `torch.<dtype>` as `_rebuild_tensor_v3` names it (torch uses v3 for the
/// dtypes without a storage class, none of which the format has).
fn dtype_global<'a>(module: &'a str, name: &'a str) -> Option<ElementType<'a>> {
    if module != "torch" {
        return None;
    }
    let known = match name {
        "float64" => Dtype::F64,
        "float32" => Dtype::F32,
        "float16" => Dtype::F16,
        "bfloat16" => Dtype::BF16,
        "int64" => Dtype::I64,
        "int32" => Dtype::I32,
        "int16" => Dtype::I16,
        "int8" => Dtype::I8,
        "uint8" => Dtype::U8,
        "bool" => Dtype::BOOL,
        "uint16" | "uint32" | "uint64" | "complex32" | "complex64" | "complex128" | "float8_e4m3fn" | "float8_e5m2"
        | "float8_e4m3fnuz" | "float8_e5m2fnuz" | "float8_e8m0fnu" | "float4_e2m1fn_x2" => {
            return Some(ElementType::Unsupported(module, name))
        }
        _ => return None,
    };
    Some(ElementType::Known(known))
}

fn opcode_name(op: u8) -> String {
    let name = match op {
        b'I' => "INT",
        b'L' => "LONG",
        b'F' => "FLOAT",
        b'S' => "STRING",
        b'T' => "BINSTRING",
        b'U' => "SHORT_BINSTRING",
        b'V' => "UNICODE",
        b'g' => "GET",
        b'p' => "PUT",
        b'P' => "PERSID",
        b'o' => "OBJ",
        0x8f => "EMPTY_SET",
        0x90 => "ADDITEMS",
        0x91 => "FROZENSET",
        0x96 => "BYTEARRAY8",
        0x97 => "NEXT_BUFFER",
        0x98 => "READONLY_BUFFER",
        _ => "",
    };
    if name.is_empty() {
        format!("0x{op:02x}")
    } else {
        format!("{name} (0x{op:02x})")
    }
}
