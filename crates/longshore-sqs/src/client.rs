//! The SQS client: configuration from the standard AWS chain, queue addressing, and mapping
//! SDK errors to [`BrokerError`].

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{ProvideErrorMetadata, SdkError};
use longshore_core::spi::Secret;
use longshore_core::{BrokerError, BrokerUrl, MessageId, QueueName};

/// Loads region, credentials and endpoint from the standard AWS configuration chain
/// (environment, profiles, `AWS_ENDPOINT_URL` for LocalStack). A queue URL of the form
/// `https://sqs.<region>.amazonaws.com/...` supplies the region if nothing else does.
pub(crate) async fn client(url: &BrokerUrl, overrides: &Overrides) -> Result<Client, BrokerError> {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(endpoint) = &overrides.endpoint_url {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(region) = &overrides.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    } else if let Some(region) = region_from_url(url.expose())
        && std::env::var_os("AWS_REGION").is_none()
        && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        loader = loader.region(aws_config::Region::new(region));
    }
    if let Some((key, secret)) = &overrides.credentials {
        loader = loader.credentials_provider(aws_sdk_sqs::config::Credentials::new(
            key,
            secret.expose(),
            None,
            None,
            "longshore",
        ));
    }
    let config = loader.load().await;
    let Some(region) = config.region().map(ToString::to_string) else {
        return Err(BrokerError::Connection(
            "no AWS region configured: set AWS_REGION (or a profile's region)".into(),
        ));
    };
    let endpoint = config.endpoint_url().map_or_else(
        || format!("https://sqs.{region}.amazonaws.com"),
        str::to_owned,
    );
    let client = Client::new(&config);
    reach(&client, &endpoint, &region).await?;
    Ok(client)
}

/// How long the first call may take before `connect` gives up (the SDK retries inside).
const FIRST_CALL: std::time::Duration = std::time::Duration::from_secs(30);

/// Makes a first call, so that a wrong endpoint, region or credentials fail `connect` with
/// an error naming the endpoint and the cause (not the first job's declare). Being refused
/// `ListQueues` itself is fine: the endpoint answered and took the credentials.
async fn reach(client: &Client, endpoint: &str, region: &str) -> Result<(), BrokerError> {
    let call = client.list_queues().max_results(1).send();
    let error = match tokio::time::timeout(FIRST_CALL, call).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(error)) => error,
        Err(_) => {
            return Err(BrokerError::Connection(
                format!("SQS at {endpoint} (region {region}) did not answer within {FIRST_CALL:?}")
                    .into(),
            ));
        }
    };
    let code = error.code().unwrap_or_default().to_owned();
    if code.starts_with("AccessDenied") {
        return Ok(());
    }
    let detail = aws_sdk_sqs::error::DisplayErrorContext(&error).to_string();
    let problem = match &error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => {
            format!("cannot reach SQS at {endpoint} (region {region}): {detail}")
        }
        SdkError::ConstructionFailure(_) => format!(
            "cannot call SQS at {endpoint} (region {region}): {detail} (are AWS credentials \
             configured? AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)"
        ),
        _ if matches!(
            code.as_str(),
            "InvalidClientTokenId"
                | "UnrecognizedClientException"
                | "SignatureDoesNotMatch"
                | "ExpiredToken"
                | "InvalidAccessKeyId"
        ) =>
        {
            format!(
                "SQS at {endpoint} (region {region}) refused the credentials ({code}): {detail}"
            )
        }
        _ => format!("SQS at {endpoint} (region {region}) failed the first call: {detail}"),
    };
    Err(BrokerError::Connection(problem.into()))
}

/// Settings that take precedence over the AWS configuration chain.
#[derive(Clone, Debug, Default)]
pub(crate) struct Overrides {
    pub(crate) endpoint_url: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) credentials: Option<(String, Secret)>,
}

fn region_from_url(url: &str) -> Option<String> {
    let host = url.split_once("://")?.1.split('/').next()?;
    let rest = host.strip_prefix("sqs.")?;
    let region = rest.split('.').next()?;
    (!region.is_empty() && rest.contains("amazonaws")).then(|| region.to_owned())
}

/// A queue as longshore addresses it: a name, `sqs://<name>`, or a queue URL.
pub(crate) enum Address {
    Name(String),
    Url(String),
}

pub(crate) fn address(queue: &QueueName) -> Address {
    let raw = queue.as_str();
    if let Some(name) = raw.strip_prefix("sqs://") {
        Address::Name(name.trim_end_matches('/').to_owned())
    } else if raw.starts_with("http://") || raw.starts_with("https://") {
        Address::Url(raw.to_owned())
    } else {
        Address::Name(raw.to_owned())
    }
}

/// The queue's name (the last path segment of a URL).
pub(crate) fn name_of(queue: &QueueName) -> String {
    match address(queue) {
        Address::Name(name) => name,
        Address::Url(url) => url
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned(),
    }
}

/// Whether an SQS error code says the queue does not exist.
fn is_missing_queue(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" | "NonExistentQueue")
    )
}

/// Whether an SQS error code says a receipt handle is no longer ours.
pub(crate) fn is_lost_lease(code: Option<&str>) -> bool {
    matches!(
        code,
        Some(
            "ReceiptHandleIsInvalid"
                | "InvalidParameterValue"
                | "MessageNotInflight"
                | "AWS.SimpleQueueService.MessageNotInflight"
        )
    )
}

/// Maps an SDK error about `queue`.
#[allow(
    clippy::needless_pass_by_value,
    reason = "taken as `map_err(|error| broker_error(error, queue))` takes it"
)]
pub(crate) fn broker_error<E, R>(error: SdkError<E, R>, queue: &QueueName) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if is_missing_queue(error.code()) {
        return BrokerError::QueueNotFound {
            queue: queue.clone(),
        };
    }
    match &error {
        SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) | SdkError::ResponseError(_) => {
            // The whole chain: "dispatch failure" alone does not say "connection refused".
            BrokerError::Connection(
                format!(
                    "SQS call for queue `{queue}` failed: {}",
                    aws_sdk_sqs::error::DisplayErrorContext(&error)
                )
                .into(),
            )
        }
        _ => {
            let code = error.code().unwrap_or("unknown").to_owned();
            let message = error.message().unwrap_or_default().to_owned();
            BrokerError::Other(format!("SQS error {code} on queue `{queue}`: {message}").into())
        }
    }
}

/// Maps an SDK error about settling `message_id`: a stale receipt handle is a lost lease.
pub(crate) fn settle_error<E, R>(
    error: SdkError<E, R>,
    queue: &QueueName,
    message_id: &MessageId,
) -> BrokerError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    if is_lost_lease(error.code()) {
        return BrokerError::LeaseLost {
            queue: queue.clone(),
            message_id: message_id.clone(),
        };
    }
    broker_error(error, queue)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_are_addressed_by_name_sqs_url_or_queue_url() {
        assert_eq!(name_of(&QueueName::new("emails")), "emails");
        assert_eq!(name_of(&QueueName::new("sqs://emails")), "emails");
        assert_eq!(
            name_of(&QueueName::new(
                "https://sqs.eu-west-1.amazonaws.com/123456789012/emails"
            )),
            "emails"
        );
        assert_eq!(
            name_of(&QueueName::new(
                "http://127.0.0.1:4566/queue/us-east-1/000000000000/jobs.fifo"
            )),
            "jobs.fifo"
        );
        assert!(matches!(
            address(&QueueName::new("https://x/1/q")),
            Address::Url(_)
        ));
    }

    #[test]
    fn region_comes_from_an_aws_queue_url() {
        assert_eq!(
            region_from_url("https://sqs.eu-west-1.amazonaws.com/1/q").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region_from_url("http://127.0.0.1:4566/queue/us-east-1/0/q"),
            None
        );
        assert_eq!(region_from_url("sqs://q"), None);
    }
}
