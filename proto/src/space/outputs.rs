//! A run's named outputs, and the [`Sweep`]: the space and outputs every
//! process derives from a run's spec the same way.

use super::{err, valid_name, Space, SpaceError, MAX_NAME, RESERVED};
use crate::v1::RunSpec;

/// Most outputs one run may declare.
pub const MAX_OUTPUTS: usize = 16;
/// The output of a run that names none.
pub const DEFAULT_OUTPUT: &str = "value";

/// Check output names (`outputs`); none means one named `value`.
pub fn validate_outputs(names: &[String]) -> Result<Vec<String>, SpaceError> {
    if names.is_empty() {
        return Ok(vec![DEFAULT_OUTPUT.to_string()]);
    }
    if names.len() > MAX_OUTPUTS {
        return Err(err(
            "outputs",
            format!("1..={MAX_OUTPUTS} names, got {}", names.len()),
        ));
    }
    for (i, n) in names.iter().enumerate() {
        if !valid_name(n) {
            return Err(err(
                "outputs",
                format!("output names are 1..={MAX_NAME} letters, digits or '_', not starting with a digit; got {n:?}"),
            ));
        }
        if names[..i].contains(n) {
            return Err(err("outputs", format!("{n:?} is given twice")));
        }
        if RESERVED.contains(&n.as_str()) {
            return Err(err(
                "outputs",
                format!("{n:?} is the results' first column: rename the output"),
            ));
        }
    }
    Ok(names.to_vec())
}

/// Outputs must not share a name with the space's axes (`p` for
/// `--params`): a point's columns must be unambiguous.
pub fn check_output_names(space: &Space, outputs: &[String]) -> Result<(), SpaceError> {
    let axes = space.names();
    match outputs.iter().find(|o| axes.contains(&o.as_str())) {
        Some(o) => Err(err(
            "outputs",
            format!(
                "{o:?} is also an axis name (axes: {}): rename the output",
                axes.join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// What a run sweeps and what it measures, from its spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Sweep {
    /// The space (`--params n`: the single axis `p`).
    pub space: Space,
    /// Whether the space was given (false: `--params`).
    pub named: bool,
    /// Output names, at least one.
    pub outputs: Vec<String>,
}

impl Sweep {
    /// The sweep of a stored spec.
    pub fn of(spec: &RunSpec) -> Result<Sweep, SpaceError> {
        let (space, named) = match &spec.space {
            Some(w) => (Space::from_wire(w)?, true),
            None => (Space::params(spec.params), false),
        };
        Ok(Sweep {
            space,
            named,
            outputs: validate_outputs(&spec.outputs)?,
        })
    }

    /// Whether agents need more than the task entry to compute a chunk (a
    /// named space or outputs): then they read the run's spec once.
    pub fn is_plain(&self) -> bool {
        !self.named && self.outputs.len() == 1 && self.outputs[0] == DEFAULT_OUTPUT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_default_to_value_and_bad_names_are_refused() {
        assert_eq!(validate_outputs(&[]).unwrap(), vec!["value"]);
        let v = |s: &[&str]| validate_outputs(&s.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(v(&["loss", "acc"]).unwrap(), vec!["loss", "acc"]);
        assert!(v(&["loss", "loss"]).unwrap_err().message.contains("twice"));
        assert!(v(&["1x"]).unwrap_err().message.contains("letters"));
        assert!(v(&["a"; 17]).unwrap_err().message.contains("1..=16"));
    }
}
