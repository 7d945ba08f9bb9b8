//! The build-time check of the container: every type a handler or factory asks for is
//! registered, and no per-job factories need each other in a cycle.

use std::any::TypeId;
use std::collections::HashMap;

use super::{Requirement, Root};
use crate::names::JobName;

/// What the check found wrong.
#[derive(Debug)]
pub(crate) enum Problem {
    /// One sentence per missing type, naming who needs it.
    Missing(Vec<String>),
    /// Factories that need each other: `A → B → A`.
    Cycle(String),
}

/// Checks that what `handlers` need, and what every factory needs, is registered in `root`,
/// and that no factories need each other in a cycle.
pub(crate) fn check_dependencies(
    root: &Root,
    handlers: &[(JobName, Vec<Requirement>)],
) -> Result<(), Problem> {
    let mut missing = Vec::new();
    let mut note = |who: String, requirement: &Requirement| {
        if !root.provides(requirement.type_id) {
            missing.push(format!(
                "{who} needs a `{}`, but none is registered; add `.dependency(value)` or \
                 `.scoped(factory)` to the worker builder",
                requirement.type_name
            ));
        }
    };
    for (job, requirements) in handlers {
        for requirement in requirements {
            note(format!("the handler of job `{job}`"), requirement);
        }
    }
    let mut factories: Vec<(&TypeId, &super::Registered)> = root.factories.iter().collect();
    factories.sort_by_key(|(_, registered)| registered.type_name);
    for (_, registered) in &factories {
        for requirement in &registered.requirements {
            note(
                format!("the per-job factory of `{}`", registered.type_name),
                requirement,
            );
        }
    }
    if !missing.is_empty() {
        return Err(Problem::Missing(missing));
    }
    let mut state = HashMap::new();
    for (type_id, _) in &factories {
        let mut path = Vec::new();
        if let Some(cycle) = visit(root, **type_id, &mut state, &mut path) {
            return Err(Problem::Cycle(cycle));
        }
    }
    Ok(())
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Visit {
    Open,
    Done,
}

/// Depth-first search over factories; the cycle through `type_id`'s descendants, if any.
fn visit(
    root: &Root,
    type_id: TypeId,
    state: &mut HashMap<TypeId, Visit>,
    path: &mut Vec<TypeId>,
) -> Option<String> {
    let registered = root.factories.get(&type_id)?;
    match state.get(&type_id) {
        Some(Visit::Done) => return None,
        Some(Visit::Open) => {
            let start = path.iter().position(|t| *t == type_id).unwrap_or(0);
            let mut names: Vec<&str> = path[start..]
                .iter()
                .filter_map(|t| root.factories.get(t).map(|r| r.type_name))
                .collect();
            names.push(registered.type_name);
            return Some(names.join(" → "));
        }
        None => {}
    }
    state.insert(type_id, Visit::Open);
    path.push(type_id);
    for requirement in &registered.requirements {
        if let Some(cycle) = visit(root, requirement.type_id, state, path) {
            return Some(cycle);
        }
    }
    path.pop();
    state.insert(type_id, Visit::Done);
    None
}
