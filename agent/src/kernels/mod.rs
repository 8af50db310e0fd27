//! Kernels: the computations agents run. A kernel declares itself (its
//! [`KernelSpec`], shared with the server through `ttg-proto` so `Submit` can
//! validate arguments) and computes one chunk's values. Adding a kernel is one
//! file here plus one line in [`Registry::builtin`].

pub mod collatz;
pub mod exec;
pub mod placeholder;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use ttg_proto::kernels::KernelSpec;
use ttg_proto::space::{Sweep, Value};

/// One chunk to compute.
#[derive(Debug, Clone)]
pub struct ChunkInput {
    /// Run id.
    pub run_id: String,
    /// Chunk index.
    pub chunk_index: u64,
    /// First parameter (inclusive).
    pub start: u64,
    /// One past the last parameter.
    pub end: u64,
    /// Validated arguments, defaults filled in.
    pub args: HashMap<String, String>,
    /// Attempt number (1 = first delivery).
    pub attempt: u32,
    /// The run's named space and outputs (None: `--params`, one output).
    pub sweep: Option<Arc<Sweep>>,
}

impl ChunkInput {
    /// Number of points in the chunk.
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    /// Whether the chunk has no point (never, for a claimed chunk).
    pub fn is_empty(&self) -> bool {
        self.end <= self.start
    }

    /// The run's sweep if it names its space (None for `--params`, even
    /// with named outputs): what decides whether points are shown to a
    /// kernel by name.
    pub fn named_space(&self) -> Option<&Sweep> {
        self.sweep.as_deref().filter(|s| s.named)
    }

    /// Number of outputs each point yields (1 without named outputs).
    pub fn outputs(&self) -> usize {
        self.sweep.as_ref().map_or(1, |s| s.outputs.len())
    }

    /// The chunk's points, typed, in index order (`p` alone for `--params`).
    pub fn points(&self) -> impl Iterator<Item = Vec<Value>> + '_ {
        (self.start..self.end).map(move |i| match &self.sweep {
            Some(s) => s.space.point(i),
            None => vec![Value::Int(i as i64)],
        })
    }

    /// Call `f(index, values)` for each point of the chunk, in order,
    /// without an allocation per point (see [`ttg_proto::space::Space::walk`]).
    pub fn for_each_point(&self, mut f: impl FnMut(u64, &[Value])) {
        match &self.sweep {
            Some(s) => s.space.walk(self.start, self.end, f),
            None => (self.start..self.end).for_each(|i| f(i, &[Value::Int(i as i64)])),
        }
    }

    /// Names of a point's values (`p` for `--params`).
    pub fn axis_names(&self) -> Vec<String> {
        match &self.sweep {
            Some(s) => s.space.names().into_iter().map(String::from).collect(),
            None => vec!["p".to_string()],
        }
    }

    /// Names of the outputs.
    pub fn output_names(&self) -> Vec<String> {
        match &self.sweep {
            Some(s) => s.outputs.clone(),
            None => vec![ttg_proto::space::DEFAULT_OUTPUT.to_string()],
        }
    }
}

/// Why a chunk produced no values.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// The computation failed; the attempt counts as failed.
    #[error("{0}")]
    Failed(String),
    /// The chunk was aborted (run cancelled, agent stopping).
    #[error("cancelled")]
    Cancelled,
}

/// Future returned by [`Kernel::compute`].
pub type ComputeFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<f64>, KernelError>> + Send + 'a>>;

/// Future returned by [`Kernel::shutdown`].
pub type ShutdownFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A computation over a range of parameters.
pub trait Kernel: Send + Sync {
    /// Name and declared arguments.
    fn spec(&self) -> &'static KernelSpec;
    /// Values of points `chunk.start .. chunk.end`: for each output in turn
    /// (see [`ChunkInput::outputs`]), one value per point in index order —
    /// `len × outputs` numbers. Must return promptly with [`KernelError::Cancelled`] once `cancel` fires.
    fn compute<'a>(
        &'a self,
        chunk: &'a ChunkInput,
        cancel: &'a CancellationToken,
    ) -> ComputeFuture<'a>;
    /// Runs the kernel keeps something for between chunks (worker
    /// processes): the agent checks them in Redis and reports those that
    /// ended through [`Kernel::run_ended`].
    fn runs_kept(&self) -> Vec<String> {
        Vec::new()
    }
    /// `run_id` ended (succeeded, failed, cancelled, deleted): drop what is
    /// kept for it.
    fn run_ended(&self, _run_id: &str) {}
    /// The agent is stopping and no chunk is computing: release everything.
    fn shutdown(&self) -> ShutdownFuture<'_> {
        Box::pin(async {})
    }
}

/// The kernels an agent offers, by name.
#[derive(Clone, Default)]
pub struct Registry {
    kernels: HashMap<&'static str, Arc<dyn Kernel>>,
}

impl Registry {
    /// Every built-in kernel; `exec` only when `exec` is given (the agent
    /// was started with --allow-exec).
    pub fn builtin(exec: Option<exec::ExecOptions>) -> Self {
        let mut r = Registry::default();
        r.add(Arc::new(placeholder::Placeholder));
        r.add(Arc::new(collatz::Collatz));
        if let Some(o) = exec {
            r.add(Arc::new(exec::Exec::new(o)));
        }
        r
    }

    /// Runs any kernel keeps something for (see [`Kernel::runs_kept`]).
    pub fn runs_kept(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kernels.values().flat_map(|k| k.runs_kept()).collect();
        v.sort();
        v.dedup();
        v
    }

    /// Tell every kernel that `run_id` ended.
    pub fn run_ended(&self, run_id: &str) {
        self.kernels.values().for_each(|k| k.run_ended(run_id));
    }

    /// Shut every kernel down (the agent is stopping, nothing computes).
    pub async fn shutdown(&self) {
        for k in self.kernels.values() {
            k.shutdown().await;
        }
    }

    /// Declarations of every kernel offered, sent to the server in Hello.
    pub fn decls(&self) -> Vec<ttg_proto::v1::KernelDecl> {
        let mut v: Vec<_> = self.kernels.values().map(|k| k.spec().decl()).collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Add (or replace) a kernel.
    pub fn add(&mut self, k: Arc<dyn Kernel>) {
        self.kernels.insert(k.spec().name, k);
    }

    /// Keep only the named kernels; unknown names are an error naming them.
    pub fn only(mut self, names: &[String]) -> Result<Self, UnknownKernel> {
        for n in names {
            if !self.kernels.contains_key(n.as_str()) {
                let mut known: Vec<_> = self.kernels.keys().copied().collect();
                known.sort_unstable();
                return Err(UnknownKernel {
                    name: n.clone(),
                    known: known.iter().map(|k| k.to_string()).collect(),
                });
            }
        }
        self.kernels.retain(|k, _| names.iter().any(|n| n == k));
        Ok(self)
    }

    /// Kernel by name.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Kernel>> {
        self.kernels.get(name)
    }

    /// Names, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.kernels.keys().map(|s| s.to_string()).collect();
        v.sort();
        v
    }
}

/// A kernel name this agent does not have.
#[derive(Debug, thiserror::Error)]
#[error("unknown kernel {name:?} (known: {})", known.join(", "))]
pub struct UnknownKernel {
    /// The name asked for.
    pub name: String,
    /// The names there are.
    pub known: Vec<String>,
}
