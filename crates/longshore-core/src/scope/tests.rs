use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::check::Problem;
use super::*;
use crate::names::JobName;

const DISPOSAL: Duration = Duration::from_secs(5);

fn context() -> JobContext {
    crate::testing::context("test")
}

struct Config(u32);
struct Tx {
    serial: usize,
}

type Log = Arc<Mutex<Vec<(usize, bool)>>>;

fn root_with_tx(built: Arc<AtomicUsize>, disposed: Log) -> Arc<Root> {
    let mut root = Root::new();
    root.insert(Config(7));
    root.scoped_with_disposer(
        move || {
            let serial = built.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, JobError>(Tx { serial }) }
        },
        move |tx: Tx, succeeded| {
            let disposed = Arc::clone(&disposed);
            async move {
                disposed.lock().unwrap().push((tx.serial, succeeded));
                Ok::<_, JobError>(())
            }
        },
    );
    Arc::new(root)
}

#[tokio::test]
async fn scoped_values_are_lazy_fresh_per_job_and_disposed_by_ownership() {
    let built = Arc::new(AtomicUsize::new(0));
    let disposed: Log = Arc::default();
    let root = root_with_tx(Arc::clone(&built), Arc::clone(&disposed));

    let first = Scope::new(Arc::clone(&root), context());
    assert_eq!(built.load(Ordering::SeqCst), 0, "factories run lazily");
    let a = first.get::<Tx>().await.unwrap();
    let again = first.get::<Tx>().await.unwrap();
    assert!(Arc::ptr_eq(&a, &again), "one value per job");
    let second = Scope::new(Arc::clone(&root), context());
    let b = second.get::<Tx>().await.unwrap();
    let (a_serial, b_serial) = (a.serial, b.serial);
    assert_ne!(a_serial, b_serial, "fresh value per job");
    drop((a, again, b));

    first.dispose(true, DISPOSAL).await.unwrap();
    second.dispose(false, DISPOSAL).await.unwrap();
    assert_eq!(
        *disposed.lock().unwrap(),
        vec![(a_serial, true), (b_serial, false)]
    );
    first.dispose(true, DISPOSAL).await.unwrap();
    assert_eq!(
        disposed.lock().unwrap().len(),
        2,
        "disposing twice does nothing"
    );
}

#[tokio::test]
async fn root_values_are_shared_and_missing_types_are_clear_errors() {
    let root = root_with_tx(Arc::default(), Arc::default());
    let one = Scope::new(Arc::clone(&root), context())
        .get::<Config>()
        .await
        .unwrap();
    let two = Scope::new(Arc::clone(&root), context())
        .get::<Config>()
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&one, &two));
    assert_eq!(one.0, 7);
    let missing = Scope::new(root, context())
        .get::<String>()
        .await
        .unwrap_err();
    assert!(
        missing
            .to_string()
            .contains("no value of type `alloc::string::String`")
    );
    assert!(!missing.is_retryable());
}

#[tokio::test]
async fn factories_take_what_they_need_and_any_error_type() {
    let mut root = Root::new();
    root.insert(Config(3));
    root.scoped(|config: Dep<Config>, ctx: JobContext| async move {
        Ok::<_, JobError>(format!("tenant-{}-{}", (*config).0, ctx.job))
    });
    // A database-style error converts with `?`-like ease: no JobError in the signature.
    root.scoped(|| async {
        Err::<u64, _>(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "db down",
        ))
    });
    let scope = Scope::new(Arc::new(root), context());
    assert_eq!(*scope.get::<String>().await.unwrap(), "tenant-3-test");
    let error = scope.get::<u64>().await.unwrap_err();
    assert!(error.is_retryable());
    assert_eq!(error.to_string(), "db down");
}

fn root_with_disposer<F, Fut>(dispose: F) -> Arc<Root>
where
    F: Fn(Tx, bool) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(), JobError>> + Send + 'static,
{
    let mut root = Root::new();
    root.scoped_with_disposer(|| async { Ok::<_, JobError>(Tx { serial: 0 }) }, dispose);
    Arc::new(root)
}

#[tokio::test]
async fn a_failing_disposer_fails_the_disposal_and_later_ones_roll_back() {
    struct Outer;
    let seen: Log = Arc::default();
    let mut root = Root::new();
    let log = Arc::clone(&seen);
    // Built first, so disposed last: it sees that the newer one failed.
    root.scoped_with_disposer(
        || async { Ok::<_, JobError>(Tx { serial: 1 }) },
        move |tx: Tx, succeeded| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push((tx.serial, succeeded));
                Ok::<_, JobError>(())
            }
        },
    );
    root.scoped_with_disposer(
        |_tx: Dep<Tx>| async { Ok::<_, JobError>(Outer) },
        |_outer: Outer, _succeeded| async {
            Err::<(), _>(std::io::Error::other(
                "commit refused: serialization failure",
            ))
        },
    );
    let scope = Scope::new(Arc::new(root), context());
    drop(scope.get::<Outer>().await.unwrap());
    let error = scope.dispose(true, DISPOSAL).await.unwrap_err();
    assert!(error.is_retryable(), "a refused commit is retried");
    assert_eq!(error.to_string(), "commit refused: serialization failure");
    assert_eq!(
        *seen.lock().unwrap(),
        vec![(1, false)],
        "the other one rolls back"
    );
}

#[tokio::test]
async fn a_panicking_or_hanging_disposer_is_a_failure_not_a_crash() {
    let panics = root_with_disposer(|_tx, _| async { panic!("disposer blew up") });
    let scope = Scope::new(panics, context());
    drop(scope.get::<Tx>().await.unwrap());
    let error = scope.dispose(true, DISPOSAL).await.unwrap_err();
    assert!(error.is_retryable());
    assert!(
        error.to_string().contains("panicked: disposer blew up"),
        "{error}"
    );

    let hangs = root_with_disposer(|_tx, _| std::future::pending());
    let scope = Scope::new(hangs, context());
    drop(scope.get::<Tx>().await.unwrap());
    let error = scope
        .dispose(true, Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("did not finish within 50ms"),
        "{error}"
    );
}

#[tokio::test]
async fn a_value_still_held_cannot_be_handed_to_its_disposer() {
    let scope = Scope::new(root_with_disposer(|_tx, _| async { Ok(()) }), context());
    let kept = scope.get::<Tx>().await.unwrap();
    let error = scope.dispose(true, DISPOSAL).await.unwrap_err();
    assert!(error.to_string().contains("was still in use"), "{error}");
    drop(kept);
}

#[tokio::test]
async fn a_factory_asking_for_its_own_type_is_an_error_not_a_deadlock() {
    struct SelfMade;
    let mut root = Root::new();
    root.scoped(|scope: Scope| async move {
        scope.get::<SelfMade>().await?;
        Ok::<_, JobError>(SelfMade)
    });
    let scope = Scope::new(Arc::new(root), context());
    let error = tokio::time::timeout(Duration::from_secs(5), scope.get::<SelfMade>())
        .await
        .expect("no deadlock")
        .err()
        .expect("an error");
    assert!(!error.is_retryable());
    assert!(
        error.to_string().contains("SelfMade → ") && error.to_string().contains("cycle"),
        "{error}"
    );
}

#[tokio::test]
async fn factories_needing_each_other_at_run_time_are_an_error_not_a_deadlock() {
    struct A;
    struct B;
    let mut root = Root::new();
    root.scoped(|scope: Scope| async move {
        scope.get::<B>().await?;
        Ok::<_, JobError>(A)
    });
    root.scoped(|scope: Scope| async move {
        scope.get::<A>().await?;
        Ok::<_, JobError>(B)
    });
    let scope = Scope::new(Arc::new(root), context());
    let error = tokio::time::timeout(Duration::from_secs(5), scope.get::<A>())
        .await
        .expect("no deadlock")
        .err()
        .expect("an error");
    let text = error.to_string();
    assert!(text.contains("::A → ") && text.contains("::B → "), "{text}");
}

#[test]
fn the_build_check_covers_factories_and_finds_cycles() {
    struct Pool;
    struct Tx2;
    struct A;
    struct B;
    let handlers = vec![(JobName::new("bill"), vec![Requirement::of::<Tx2>()])];

    let mut root = Root::new();
    root.scoped(|_pool: Dep<Pool>| async { Ok::<_, JobError>(Tx2) });
    let Err(Problem::Missing(missing)) = check_dependencies(&root, &handlers) else {
        panic!("a factory's missing dependency is found");
    };
    assert_eq!(missing.len(), 1);
    assert!(
        missing[0].starts_with("the per-job factory of `")
            && missing[0].contains("Tx2` needs a `")
            && missing[0].contains("Pool`, but none is registered"),
        "{missing:?}"
    );
    root.insert(Pool);
    check_dependencies(&root, &handlers).expect("complete");

    root.scoped(|_b: Dep<B>| async { Ok::<_, JobError>(A) });
    root.scoped(|_a: Dep<A>| async { Ok::<_, JobError>(B) });
    let Err(Problem::Cycle(cycle)) = check_dependencies(&root, &handlers) else {
        panic!("the cycle is found");
    };
    assert!(
        cycle.contains("::A → ") && cycle.contains("::B → "),
        "{cycle}"
    );
}
