"""The services: what the CLI, the worker tasks, the reconciler (and later the API) call. SQL
stays below here. This package exports nothing: import each name from its module, named on the
left of the map below (`from orchestrator.services.jobs import submit_job`).

Conventions: every function takes a SQLAlchemy `Session` first (from
`orchestrator.registry.db.session_scope(settings)`), runs as ONE transaction and commits it
(rolls back on error); returned rows stay readable after the commit (expire_on_commit=False).
Relationships are lazy="raise": use the returned fields/views, not `job.tenant`.
Ids are UUID strings. Timestamps are tz-aware UTC. `tenant` arguments are slugs; None = all.
Errors live on the ground floor (orchestrator.errors, imported from there): NotFound, Conflict,
InvalidState, InvalidInput (a LoraFleetInputError), BatchError(problems={index: [..]}), LeaseLost,
Unauthenticated;
lora_engine SpecError for a bad spec. No retry policy here: the caller classifies.

API
---
registry.db:      session_scope(settings=None, *, url=None) -> ctx[Session]; ensure_schema(settings);
                  upgrade(url, "head"); downgrade(url, "base"); check(url); current_revision(url);
                  dispose_engines()  (after fork); make_engine(url); session_factory(url)
tenants:          create_tenant(s, slug, name=None, max_running=None) -> Tenant
                  list_tenants(s) -> [Tenant]; get_tenant(s, slug) -> Tenant
                  set_tenant_quota(s, slug, max_running=None, *, max_queued=None,
                             device_hours_per_month=KEEP|None|h, max_storage_bytes=KEEP|None|n)
                  validate_slug(slug)
quotas:           tenant_quota_usage(s, slug) -> QuotaUsage (running/queued/device-hours this
                             month/storage against each limit); refusals raise QuotaExceeded
                             (an InvalidInput) with the figures
datasets:         upload_dataset(s, tenant_slug, file, kind="classification", validation=None)
                             -> Dataset (validated whole, stored by id, sha256; same bytes: same row)
                  list_datasets(s, tenant=None); get_dataset(s, id, tenant=None);
                  delete_dataset(s, id, tenant=None) (refused while queued/running jobs use it)
                  dataset_for_training(s, id, tenant_id) -> the stored file, sha256 checked (worker)
                  upload_stream(s, tenant_slug, stream, filename, kind=None) -> Dataset (bytes from
                             the network, the API's upload; at most max_dataset_bytes: TooLarge)
                  kind None: the file's format decides it (Dataset.format: text_label |
                             prompt_completion | chat; chat rows are rendered when a job starts)
                  Paths a user passes are confined to settings.data_roots (orchestrator.paths).
jobs:             submit_job(s, tenant_slug, spec_dict, priority=0, idempotency_key=None,
                             init_from_adapter_id=None, max_attempts=None, settings=None) -> Job
                             (queued); spec "dataset": a data set id or a JSONL file (uploaded);
                             "init_from": an adapter id or folder (registered); "base_model": an
                             alias, hub id, folder or full fine-tune id (jobs.base_adapter_id);
                             ids or paths by spelling (orchestrator.refs), paths confined
                             quotas: max queued, the month's device-hour budget (estimated)
                  plan_job(s, tenant_slug, spec_dict, ...) -> Plan (dry run: spec, data set,
                             Estimate(examples, tokens, device_seconds, money, basis)); writes nothing
                  submit_batch(s, items, max_attempts=None) -> [Job]   items: {"tenant", "spec": {..},
                             "priority"?, "idempotency_key"?, "init_from_adapter_id"?} or flat
                             {"tenant", "task", "rank", ...}; all or nothing (BatchError)
                  submit_job with spec method "none" -> Job kind "evaluate" (untuned baseline)
                  list_jobs(s, tenant=None, state=None, limit=None, offset=0) -> [Job] newest first
                  get_job(s, job_id, tenant=None) -> JobDetail(job, tenant_slug, adapter, metrics, usage)
                             .to_dict() -> {"id", "state", "attempts", "metrics",
                                            "adapter": {"id", "path", ..} | None, ...}
                  job_events(s, job_id, after_id=None, tenant=None) -> [JobEvent] (ordered by id)
                  cancel_job(s, job_id, tenant=None) -> Job   (queued|paused: cancelled; running: flag)
                  submit_within(s, tenant_slug, spec_dict, ..., labels=JobLabels(metadata, suffix,
                             validation_dataset_id)) -> Job   (submit_job's work inside another
                             service's transaction: the API's fine-tuning request)
                  retry_job(s, job_id, tenant=None) -> Job    (failed|cancelled -> queued, a fresh budget)
pausing:          pause_job(s, job_id, tenant=None) -> Job   (queued: paused now; running:
                             pause_requested, the worker checkpoints, the job goes `paused`, attempt
                             given back; nothing claims or re-dispatches a paused job)
                  resume_job(s, job_id, tenant=None) -> Job  (paused -> queued, sent after commit;
                             resumes from its checkpoint; the queue quota applies)
fine_tuning:      create_fine_tuning_job(s, tenant_slug, body, settings=None) -> Job (OpenAI's request
                             mapped onto the spec; every problem in one RequestProblems(.param))
                  fine_tuning_spec(s, tenant, body, settings) -> (spec dict, JobLabels) (inside one)
                  metadata_problems(value) -> [str] (OpenAI's limits: 16 pairs, keys 64, values 512)
                  default_lr(spec) -> float (what learning_rate_multiplier multiplies)
fine_tuning_views: OpenAI's objects, one tenant's: get_fine_tuning_job(s, id, tenant) -> dict;
                  list_fine_tuning_jobs(s, tenant, after=None, limit=20, metadata=None) -> (page,
                             has_more) (keyset on (created_at, id), newest first; 3 queries a page);
                  fine_tuning_events / fine_tuning_checkpoints(s, id, tenant, after=, limit=) ->
                             (page, has_more) (newest first); result_file(s, "result-<job id>",
                             tenant) -> (file object, CSV of the metrics history); job_object(...)
base_models:      tenant_bases(settings) -> (names) (setting allowed_base_models, else every packaged
                             alias and cached hub id); base_problem(name, settings) -> str | None
                             (never a path)
reevaluation:     submit_reevaluation(s, tenant=None|slug|[slugs], task=None, base_model=None,
                             eval_size=None, priority=0, max_attempts=None) -> [Job kind
                             "reevaluate"], one per (tenant, base model); nothing found: InvalidInput
leases (worker):  claim_job(s, job_id, worker_id, lease_seconds, now=None) -> Job | None
                  claim_next(s, worker_id, lease_seconds, now=None, devices=1, device_kind="cpu",
                             message=None)
                            -> Job | None   (fair share; a job of the message's class)
                  unclaimable_reason(s, job_id) -> str
                  heartbeat(s, job_id, worker_id, step, total, loss, lease_seconds, now=None,
                            event_interval_s=5.0, grad_norm=None) -> retries.Abort.CANCEL |
                            Abort.PAUSE | None (why to stop: a cancel wins over a pause)
                            raises LeaseLost
                  record_checkpoint(s, job_id, worker_id, step, path=None)
                  record_phase(s, job_id, worker_id, "evaluating"|"saving", step)   (a `phase` event)
                  record_resume(s, job_id, worker_id, step, path=None)   (a `resumed` event)
                  finish_job_success(s, job_id, worker_id, AdapterRecord(id, path, sha256, bytes,
                            trainable_params, total_params) | None, metrics={split: {name: value}},
                            usage=UsageRecord(device, device_seconds, wall_seconds, peak_memory_bytes,
                            examples, tokens) or a dict of those,
                            reevaluated={adapter_id: {split: {name: value}}})
                            -> Adapter | None   (train: adapter; evaluate: None; reevaluate: scores)
                  fail_job(s, job_id, worker_id, reason, usage=None) -> Job
                  mark_cancelled(s, job_id, worker_id, step=None, usage=None) -> Job
                  requeue_job(s, job_id, worker_id, reason, usage=None, *, release=False,
                            retry_in=None) -> "queued" | "failed" | "cancelled" | "paused" (a pause
                            requested: paused, not queued)
                  return_job(s, job_id, worker_id, reason) -> "queued" (a worker
                            fault: the attempt given back) | "cancelled"
enqueue:          enqueue_job(s, job_id, countdown=None): a service records a queued job's message
                            in its transaction; sent after the commit by the edge's session
                            (announce.sending_session), forgotten on rollback. submit_job,
                            submit_batch, retry_job, submit_reevaluation, requeue_job, return_job
                            record theirs; no caller announces by hand
workers:          register_worker(s, WorkerInfo(id, hostname, pid,
                            queue, device_kind, device_name, beat_seconds), now=None) -> Worker
                  worker_beat(s, worker_id, job_id|None, now=None, *, unhealthy=reason|None)
                            -> bool (False: no row, or stopped)
                  mark_worker_stopped(s, worker_id, now=None)
                  worker_state(row, now) -> alive|unhealthy|lost|stopped
reconcile:        reconcile(s, now=None, *, lease_grace_s=5, redispatch_after_s=60)
                            -> ReconcileResult(dispatch=[ids to send], requeued=[..], failed=[..],
                               cancelled=[..], paused=[..])
                  mark_dispatched(s, job_ids)   (after sending the messages for new jobs)
                  by_class(s, job_ids) -> {dispatch.JobClass: [ids]}   (each message's queue)
files:            the API's files: a tenant's data sets + the built-ins (builtin-glue-<task>, builtin-e2e)
                  list_files(s, tenant, after=None, limit=20, order="desc", purpose=None)
                             -> ([FileView], has_more); get_file(s, id, tenant) -> FileView (.to_dict():
                             OpenAI's file object); file_content(s, id, tenant) -> Path | bytes
                             (a job's result file "result-<job id>": its CSV);
                  delete_file(s, id, tenant) -> id (built-ins, result files, files jobs use: refused)
                  training_source(s, file_id, tenant) -> ("task", name) | ("dataset", Dataset)
                             (inside the caller's transaction: the job's submission)
model_names:      model_name(adapter, tenant_slug, suffix=None) -> "ft:<base>:<tenant>:<suffix|task>:<id>"
                  parse_model_name(text) -> adapter id | None (the last ':' field)
adapters:         new_adapter_path(settings, tenant_id, adapter_id) -> <artifacts>/<tenant>/<adapter>
                  (from orchestrator.artifacts, the one home of every artifact path)
                  list_adapters(s, tenant=None, task=None, base_model=None, include_deleted=False)
                  get_adapter(s, adapter_id, tenant=None) -> Adapter (an id, a unique prefix or an
                             `ft:` model name, as every adapter_id of this module)
                  verified_adapter(s, adapter_id, tenant=None) -> Adapter (files match its sha256,
                            else lora_engine AdapterError; call before loading an adapter)
                  delete_adapter(s, adapter_id, tenant=None, settings=None) -> Adapter (files removed)
                  model_names_of(s, adapters) -> {adapter_id: "ft:..." name} (slug, job's suffix)
overview:         job_listing(s, tenant=None, state=None, limit=None, offset=0) -> [ListedJob(job,
                            tenant_slug, headline=(metric, value)|None)] (.to_dict(): job_dict)
                  tenant_overview(s, slug) -> TenantOverview(tenant, summary, quotas)
                            (.to_dict(): what `tenant show` prints; .storage_warning)
summary:          tenant_summary(s, tenant=None) -> [TenantSummary(slug, name, max_running,
                            jobs={state: n}, adapters, adapter_bytes, device_seconds, wall_seconds,
                            examples, tokens)] (.to_dict())
webhooks:         create_webhook(s, tenant_slug, url, *, restricted=False, allow_private=False,
                            name=None, event_types=None (all)) -> CreatedWebhook(endpoint, secret)
                            (the secret: returned here only; restricted (the API): public
                            addresses only, orchestrator.webhook_urls; Conflict past 20 a tenant)
                  list_webhooks(s, tenant=None) -> [WebhookEndpoint]; get_webhook(s, id, tenant=None);
                  remove_webhook(s, id, tenant=None) (disabled; its pending deliveries failed);
                  webhook_dict(endpoint, tenant_slug=None) (no secret)
                  webhook_deliveries(s, webhook_id, tenant=None, limit=50) -> [DeliveryDetail(
                            delivery, attempts)] newest first (.to_dict(); removed endpoints too)
webhook_outbox:   job_ended(s, job) (inside every terminal transition's transaction: one delivery
                            per active endpoint of the tenant taking that event type; not a
                            transaction of its own); has_due(s) (a read)
                  claim_due(s, limit, in_flight_s, now=None) -> [DueDelivery]  (senders)
                  record_attempt(s, delivery_id, status_code, error, duration_ms, RetryPolicy,
                            now=None, rng=None) -> "delivered" | "pending" | "failed"
                  Sending: orchestrator.webhook_delivery (deliver_due(settings), WebhookSender)
inference:        served_adapter(s, model, tenant_id) -> ServedAdapter (the tenant's live adapter an `ft:`
                             name names, one statement; NotFound otherwise); verified_served(s,
                             adapter_id, tenant) (sha256 checked); served_adapters(s, tenant);
                  record_inference(s, [InferenceRecord, ...]) (one row per request, one insert);
                             inference_totals(s, tenant=None)
keys:             create_key(s, tenant_slug, name=None, expires_days=None) -> (ApiKey, raw key)
                  create_operator_key(s, name=None, expires_days=None) -> (ApiKey, raw key)
                             (the raw key exists only in the return value; the row holds its sha256)
                  list_keys(s, tenant_slug | None (operator keys)) -> [ApiKey]; key_dict(row)
                  revoke_key(s, key_id) -> ApiKey (idempotent)
                  authenticate(s, raw_key, now=None) -> KeyIdentity(key_id, tenant_id, tenant_slug,
                             operator) | raises Unauthenticated (unknown, revoked, expired)
                  touch_key(s, key_id, now=None); needs_touch(identity, now) (at most once a minute)
rate_limits:      hit(s, bucket, window_start, expires_at) -> count after this one (upsert);
                  counts(s, [(bucket, window_start)]) -> [count]   (the API's limits without Redis)
views:            tenant_dict, job_dict, adapter_dict, event_dict, usage_dict (stable JSON keys)
registry.models:  new_id() (for a new adapter id), JOB_STATES, TERMINAL_STATES
"""
