package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
)

// RequestLogEntry is one answered request. The gateway fills it from values
// it has copied out of the fasthttp context (Enqueue copies the struct, not
// the bytes its strings point to).
type RequestLogEntry struct {
	Time   time.Time // when the request arrived; zero means at Enqueue
	NodeID string    // empty means RequestLogConfig.NodeID
	// RouteID is the matched route; uuid.Nil (no route matched) is NULL.
	RouteID uuid.UUID
	Method  string
	Host    string
	Path    string // truncated to 2048 bytes
	Query   string // empty is NULL; truncated to 2048 bytes
	// Status is the status actually returned to the client.
	Status int
	// Upstream is the target the request went to; empty (none) is NULL.
	Upstream string
	// UpstreamStatus is the upstream's status; 0 (no response) is NULL.
	UpstreamStatus int
	Latency        time.Duration // total, stored in µs
	// UpstreamLatency is the time spent on the upstream; 0 is NULL.
	UpstreamLatency time.Duration
	BytesIn         int64
	BytesOut        int64
	// ClientIP is the client after trusted-proxy resolution; the zero Addr
	// is NULL.
	ClientIP  netip.Addr
	UserAgent string // empty is NULL; truncated to 512 bytes
	RequestID string
	TraceID   string // empty is NULL
	Consumer  string // the authenticated user or consumer; empty is NULL
}

// Field bounds applied by Enqueue. Truncation keeps whole UTF-8 sequences.
const (
	RequestLogMaxPath      = 2048
	RequestLogMaxQuery     = 2048
	RequestLogMaxUserAgent = 512
	// RequestLogMaxField bounds every other string field.
	RequestLogMaxField = 256
)

// RequestLogConfig configures a RequestLogWriter. Zero values take the
// documented defaults; the environment variables are read by cmd/isekai.
type RequestLogConfig struct {
	// BatchSize is the most rows per COPY (REQUEST_LOG_BATCH_SIZE, 5000).
	BatchSize int
	// FlushInterval is the longest a row waits for its batch to fill
	// (REQUEST_LOG_FLUSH_INTERVAL, 200ms).
	FlushInterval time.Duration
	// QueueSize bounds the in-memory queue in entries; beyond it Enqueue
	// drops (REQUEST_LOG_QUEUE_SIZE, 65536).
	QueueSize int
	// SpoolDir holds the on-disk spool used while Postgres is unreachable,
	// normally RequestLogSpoolDir(ISEKAI_DATA_DIR). Empty means no spool:
	// a batch is retried in memory while the queue absorbs new entries and
	// then drops them. One writer per directory.
	SpoolDir string
	// SpoolMaxBytes bounds the spool on disk; beyond it batches are dropped
	// (REQUEST_LOG_SPOOL_BYTES, 256 MiB).
	SpoolMaxBytes int64
	// Retention is how long rows are kept; older day partitions are dropped
	// (REQUEST_LOG_RETENTION, 7 days). Negative keeps everything.
	Retention time.Duration
	// SampleRate is the fraction of requests recorded, in (0, 1]
	// (REQUEST_LOG_SAMPLE_RATE, 1.0; zero means 1.0).
	SampleRate float64
	// MaintainInterval is how often partitions are created ahead and
	// expired ones dropped (1h); negative disables maintenance here.
	MaintainInterval time.Duration
	// NodeID fills entries whose NodeID is empty.
	NodeID string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Defaults of RequestLogConfig.
const (
	DefaultRequestLogBatchSize        = 5000
	DefaultRequestLogFlushInterval    = 200 * time.Millisecond
	DefaultRequestLogQueueSize        = 65536
	DefaultRequestLogSpoolMaxBytes    = 256 << 20
	DefaultRequestLogRetention        = 7 * 24 * time.Hour
	DefaultRequestLogMaintainInterval = time.Hour
)

// RequestLogSpoolDir is the spool directory under a node's data directory.
func RequestLogSpoolDir(dataDir string) string {
	return filepath.Join(dataDir, "spool", "request_logs")
}

const (
	// requestLogDaysAhead is how many days of partitions exist ahead.
	requestLogDaysAhead = 3
	// requestLogCopyTimeout bounds one COPY, so a database that stops
	// answering (rather than refusing) sends batches to the spool.
	requestLogCopyTimeout = 10 * time.Second
	requestLogMinBackoff  = 100 * time.Millisecond
	requestLogMaxBackoff  = 5 * time.Second
	// requestLogReportEvery is the shortest interval between two warnings
	// about dropped entries or bad rows.
	requestLogReportEvery = 10 * time.Second
)

// RequestLogDrops counts entries that will never reach Postgres, by reason.
type RequestLogDrops struct {
	QueueFull uint64 // Enqueue found the queue full
	SpoolFull uint64 // Postgres was unreachable and the spool full (or unwritable)
	BadRow    uint64 // Postgres rejected the row itself (isolated from its batch)
	Shutdown  uint64 // enqueued after Stop, or neither written nor spooled by Stop
}

// Total is the sum over every reason.
func (d RequestLogDrops) Total() uint64 { return d.QueueFull + d.SpoolFull + d.BadRow + d.Shutdown }

// RequestLogStats is a snapshot of a writer's counters; every count is
// since NewRequestLogWriter.
type RequestLogStats struct {
	Enqueued   uint64 // accepted into the queue
	SampledOut uint64 // skipped by sampling (not drops)
	Written    uint64 // rows committed to Postgres, replayed ones included
	Spooled    uint64 // rows appended to the spool
	Replayed   uint64 // rows written from the spool
	Dropped    RequestLogDrops
	Batches    uint64 // successful COPYs
	CopyErrors uint64 // failed COPYs (transient, or a batch holding a bad row)
	// LastBatchSize and LastFlushDuration describe the last batch written
	// straight from the queue.
	LastBatchSize     int
	LastFlushDuration time.Duration
	QueueLen          int
	QueueCap          int
	SpoolBytes        int64 // on disk now
	// DatabaseUp is false from a failed COPY until one succeeds (true
	// before the first).
	DatabaseUp bool
}

// RequestLogWriter records requests in request_logs: Enqueue puts an entry
// in a bounded queue without waiting, and one goroutine COPYs batches. While
// Postgres is unreachable, batches go to an on-disk spool that is replayed,
// oldest first, before any newer batch once Postgres answers again.
//
// Delivery is exactly once for entries that are not dropped, except that a
// COPY whose commit succeeded but whose answer was lost (the connection
// died at that moment) is spooled and written again.
type RequestLogWriter struct {
	pool   *pgxpool.Pool
	cfg    RequestLogConfig
	log    *slog.Logger
	sample float64
	queue  chan RequestLogEntry
	closed atomic.Bool // Enqueue refuses

	enqueued, sampledOut, written, spooled, replayed atomic.Uint64
	dropQueue, dropSpool, dropBad, dropShutdown      atomic.Uint64
	batches, copyErrors                              atomic.Uint64
	lastBatch, lastFlush, spoolBytes                 atomic.Int64
	dbUp                                             atomic.Bool

	mu        sync.Mutex
	started   bool
	stopping  bool
	stopCh    chan struct{}      // closed by Stop
	stopCtx   context.Context    // Stop's ctx, set before stopCh is closed
	cancel    context.CancelFunc // ends the partition maintenance
	runCancel context.CancelFunc // aborts the writer's database work
	done      chan struct{}      // closed when the writer has drained

	// Owned by the writer goroutine.
	batch     []RequestLogEntry
	src       requestLogSource
	spool     *requestLogSpool
	backoff   time.Duration
	nextProbe time.Time
	reported  RequestLogDrops
	reportAt  time.Time
	badErr    error // the first bad-row error since the last report
}

// NewRequestLogWriter validates cfg and returns a writer; Start runs it.
// The database must be migrated (request_logs, 0002).
func NewRequestLogWriter(pool *pgxpool.Pool, cfg RequestLogConfig) (*RequestLogWriter, error) {
	if pool == nil {
		return nil, errors.New("request log: a pool is required")
	}
	switch {
	case cfg.BatchSize < 0:
		return nil, fmt.Errorf("request log: BatchSize %d is negative", cfg.BatchSize)
	case cfg.FlushInterval < 0:
		return nil, fmt.Errorf("request log: FlushInterval %v is negative", cfg.FlushInterval)
	case cfg.QueueSize < 0:
		return nil, fmt.Errorf("request log: QueueSize %d is negative", cfg.QueueSize)
	case cfg.SpoolMaxBytes < 0:
		return nil, fmt.Errorf("request log: SpoolMaxBytes %d is negative", cfg.SpoolMaxBytes)
	case cfg.SampleRate < 0 || cfg.SampleRate > 1 || math.IsNaN(cfg.SampleRate):
		return nil, fmt.Errorf("request log: SampleRate %v is not in (0, 1]", cfg.SampleRate)
	}
	if cfg.BatchSize == 0 {
		cfg.BatchSize = DefaultRequestLogBatchSize
	}
	if cfg.FlushInterval == 0 {
		cfg.FlushInterval = DefaultRequestLogFlushInterval
	}
	if cfg.QueueSize == 0 {
		cfg.QueueSize = DefaultRequestLogQueueSize
	}
	if cfg.SpoolMaxBytes == 0 {
		cfg.SpoolMaxBytes = DefaultRequestLogSpoolMaxBytes
	}
	if cfg.Retention == 0 {
		cfg.Retention = DefaultRequestLogRetention
	}
	if cfg.SampleRate == 0 {
		cfg.SampleRate = 1
	}
	if cfg.MaintainInterval == 0 {
		cfg.MaintainInterval = DefaultRequestLogMaintainInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	w := &RequestLogWriter{
		pool:   pool,
		cfg:    cfg,
		log:    cfg.Logger,
		sample: cfg.SampleRate,
		queue:  make(chan RequestLogEntry, cfg.QueueSize),
		stopCh: make(chan struct{}),
		done:   make(chan struct{}),
		batch:  make([]RequestLogEntry, 0, cfg.BatchSize),
	}
	w.src.init(cfg.NodeID)
	w.dbUp.Store(true)
	return w, nil
}

// Start opens the spool (replaying what a previous run left there once
// Postgres answers) and runs the writer and the partition maintenance in
// the background until Stop; ending ctx does not stop them. A database
// that is down is not an error. Entries enqueued before Start wait in the
// queue.
func (w *RequestLogWriter) Start(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.started || w.stopping {
		return errors.New("starting request log writer: already started or stopped")
	}
	if w.cfg.SpoolDir != "" {
		sp, err := openRequestLogSpool(w.cfg.SpoolDir, w.cfg.SpoolMaxBytes)
		if err != nil {
			return fmt.Errorf("starting request log writer: %w", err)
		}
		w.spool = sp
		w.spoolBytes.Store(sp.bytes())
		if !sp.empty() {
			w.log.Info("request log spool found; replaying it when the database answers",
				"dir", w.cfg.SpoolDir, "bytes", sp.bytes())
		}
	}
	w.started = true
	// Only Stop ends the writer, so that its final drain always runs; ctx
	// is kept for its values.
	ctx = context.WithoutCancel(ctx)
	mctx, cancel := context.WithCancel(ctx)
	rctx, runCancel := context.WithCancel(ctx)
	w.cancel, w.runCancel = cancel, runCancel
	var wg sync.WaitGroup
	if w.cfg.MaintainInterval > 0 {
		wg.Go(func() { w.maintainLoop(mctx) })
	}
	wg.Go(func() { w.run(rctx) })
	go func() {
		wg.Wait()
		close(w.done)
	}()
	return nil
}

// Stop stops accepting entries and drains: the queue is written to
// Postgres within ctx, or else to the spool, and the spool is replayed if
// Postgres answers and ctx allows. It returns an error when entries were
// lost in the process. It is safe before Start and twice.
func (w *RequestLogWriter) Stop(ctx context.Context) error {
	w.mu.Lock()
	w.closed.Store(true)
	if !w.started {
		w.stopping = true
		w.mu.Unlock()
		if n := w.discardQueue(); n > 0 {
			return fmt.Errorf("stopping request log writer: %d entries dropped: never started", n)
		}
		return nil
	}
	first := !w.stopping
	if first {
		w.stopping = true
		w.stopCtx = ctx
		close(w.stopCh)
	}
	done := w.done
	w.cancel()
	// When ctx ends, a COPY still running from before Stop is abandoned
	// too (its batch goes to the spool): from then on the writer only
	// writes to the local disk. Wait for it.
	abandon := context.AfterFunc(ctx, w.runCancel)
	w.mu.Unlock()
	<-done
	abandon()
	w.runCancel()
	w.discardQueue() // entries that raced with Stop past the writer's last look
	if first {
		if n := w.dropShutdown.Load(); n > 0 {
			return fmt.Errorf("stopping request log writer: %d entries dropped", n)
		}
	}
	return nil
}

// Enqueue hands an entry to the writer without blocking: it copies *e and
// returns at once. It returns false when the entry is dropped (the queue is
// full, or the writer stopped); an entry skipped by sampling counts as
// accepted. Safe for concurrent use.
func (w *RequestLogWriter) Enqueue(e *RequestLogEntry) bool {
	if w.closed.Load() {
		w.dropShutdown.Add(1)
		return false
	}
	if w.sample < 1 && rand.Float64() >= w.sample {
		w.sampledOut.Add(1)
		return true
	}
	var ok bool
	if e.Time.IsZero() || len(e.Path) > RequestLogMaxPath || len(e.UserAgent) > RequestLogMaxUserAgent ||
		len(e.Query) > RequestLogMaxQuery || len(e.Host) > RequestLogMaxField || len(e.Upstream) > RequestLogMaxField ||
		len(e.RequestID) > RequestLogMaxField || len(e.TraceID) > RequestLogMaxField ||
		len(e.Consumer) > RequestLogMaxField || len(e.Method) > RequestLogMaxField || len(e.NodeID) > RequestLogMaxField {
		c := *e
		c.bound()
		select {
		case w.queue <- c:
			ok = true
		default:
		}
	} else {
		select {
		case w.queue <- *e:
			ok = true
		default:
		}
	}
	if !ok {
		w.dropQueue.Add(1)
		return false
	}
	w.enqueued.Add(1)
	return true
}

// bound fills a zero Time and truncates the string fields to their limits.
func (e *RequestLogEntry) bound() {
	if e.Time.IsZero() {
		e.Time = time.Now()
	}
	e.Path = truncateUTF8(e.Path, RequestLogMaxPath)
	e.Query = truncateUTF8(e.Query, RequestLogMaxQuery)
	e.UserAgent = truncateUTF8(e.UserAgent, RequestLogMaxUserAgent)
	for _, s := range []*string{&e.NodeID, &e.Method, &e.Host, &e.Upstream, &e.RequestID, &e.TraceID, &e.Consumer} {
		*s = truncateUTF8(*s, RequestLogMaxField)
	}
}

// truncateUTF8 cuts s to at most n bytes without splitting a UTF-8
// sequence (a split one would make Postgres reject the row).
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && cut > n-utf8.UTFMax && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut]
}

// Stats returns the counters.
func (w *RequestLogWriter) Stats() RequestLogStats {
	return RequestLogStats{
		Enqueued:   w.enqueued.Load(),
		SampledOut: w.sampledOut.Load(),
		Written:    w.written.Load(),
		Spooled:    w.spooled.Load(),
		Replayed:   w.replayed.Load(),
		Dropped: RequestLogDrops{
			QueueFull: w.dropQueue.Load(),
			SpoolFull: w.dropSpool.Load(),
			BadRow:    w.dropBad.Load(),
			Shutdown:  w.dropShutdown.Load(),
		},
		Batches:           w.batches.Load(),
		CopyErrors:        w.copyErrors.Load(),
		LastBatchSize:     int(w.lastBatch.Load()),
		LastFlushDuration: time.Duration(w.lastFlush.Load()),
		QueueLen:          len(w.queue),
		QueueCap:          cap(w.queue),
		SpoolBytes:        w.spoolBytes.Load(),
		DatabaseUp:        w.dbUp.Load(),
	}
}

// run is the writer goroutine.
func (w *RequestLogWriter) run(ctx context.Context) {
	tick := time.NewTicker(w.cfg.FlushInterval)
	defer tick.Stop()
	for {
		select {
		case e := <-w.queue:
			w.batch = append(w.batch, e)
			w.fill()
			if len(w.batch) >= w.cfg.BatchSize {
				w.flush(ctx, false)
				w.replayIfDue(ctx)
			}
		case <-tick.C:
			if len(w.batch) > 0 {
				w.flush(ctx, false)
			}
			w.replayIfDue(ctx)
			w.report(false)
		case <-w.stopCh:
			w.drain(w.stopCtx)
			return
		}
	}
}

// fill moves queued entries into the batch, without waiting, up to
// BatchSize.
func (w *RequestLogWriter) fill() {
	for len(w.batch) < w.cfg.BatchSize {
		select {
		case e := <-w.queue:
			w.batch = append(w.batch, e)
		default:
			return
		}
	}
}

// drain is the final flush at Stop.
func (w *RequestLogWriter) drain(ctx context.Context) {
	for {
		w.fill()
		if len(w.batch) == 0 {
			break
		}
		w.flush(ctx, true)
	}
	for w.spool != nil && !w.spool.empty() && w.dbUp.Load() && ctx.Err() == nil {
		if !w.replayOne(ctx) {
			break
		}
	}
	if w.spool != nil {
		if err := w.spool.close(); err != nil {
			w.log.Error("closing request log spool", "err", err)
		}
	}
	w.discardQueue() // entries that raced with Stop
	w.report(true)
}

func (w *RequestLogWriter) discardQueue() int {
	n := 0
	for {
		select {
		case <-w.queue:
			n++
		default:
			w.dropShutdown.Add(uint64(n))
			return n
		}
	}
}

// flush writes the batch to Postgres or to the spool, and empties it.
func (w *RequestLogWriter) flush(ctx context.Context, final bool) {
	rows := w.batch
	defer func() { w.batch = w.batch[:0] }()
	if w.spool != nil {
		// Older spooled batches go first; and while Postgres is down, only
		// a due probe (replayIfDue) touches it.
		if !w.spool.empty() || !w.probeDue() {
			w.spoolRows(rows)
			return
		}
		start := time.Now()
		n, err := w.write(ctx, rows, false)
		if err != nil {
			w.markDown(err)
			w.spoolRows(rows[n:])
			return
		}
		w.markUp(len(rows), time.Since(start))
		return
	}
	// No spool: hold the batch and retry; meanwhile the queue absorbs new
	// entries, then drops them.
	for {
		start := time.Now()
		n, err := w.write(ctx, rows, false)
		if err == nil {
			w.markUp(len(rows), time.Since(start))
			return
		}
		rows = rows[n:]
		w.markDown(err)
		if final && ctx.Err() != nil {
			w.dropShutdown.Add(uint64(len(rows)))
			return
		}
		t := time.NewTimer(w.backoff)
		select {
		case <-t.C:
		case <-ctx.Done():
		case <-w.stopCh:
			if !final {
				ctx, final = w.stopCtx, true
			}
		}
		t.Stop()
	}
}

func (w *RequestLogWriter) probeDue() bool {
	return w.dbUp.Load() || !time.Now().Before(w.nextProbe)
}

func (w *RequestLogWriter) markDown(err error) {
	if w.dbUp.Swap(false) {
		w.log.Warn("request log: database unavailable; spooling batches", "err", err)
	}
	w.backoff = min(max(w.backoff*2, requestLogMinBackoff), requestLogMaxBackoff)
	w.nextProbe = time.Now().Add(w.backoff)
}

func (w *RequestLogWriter) markUp(n int, took time.Duration) {
	if n > 0 {
		w.lastBatch.Store(int64(n))
		w.lastFlush.Store(int64(took))
	}
	if !w.dbUp.Swap(true) {
		w.log.Info("request log: database available again")
	}
	w.backoff = 0
}

// spoolRows appends rows to the spool as one record, or drops and counts
// them when the spool is full or cannot be written.
func (w *RequestLogWriter) spoolRows(rows []RequestLogEntry) {
	if len(rows) == 0 {
		return
	}
	ok, err := w.spool.append(rows)
	w.spoolBytes.Store(w.spool.bytes())
	if err != nil {
		w.log.Error("request log: writing the spool", "err", err)
	}
	if !ok || err != nil {
		w.dropSpool.Add(uint64(len(rows)))
		return
	}
	w.spooled.Add(uint64(len(rows)))
}

// replayIfDue replays the oldest spool segment when there is one and
// Postgres is up or due for a probe.
func (w *RequestLogWriter) replayIfDue(ctx context.Context) {
	if w.spool != nil && !w.spool.empty() && w.probeDue() {
		w.replayOne(ctx)
	}
}

// replayOne writes the oldest spool segment to Postgres and deletes it. On
// a transient failure it keeps what is left of the segment for later. It
// reports whether the whole segment was replayed.
func (w *RequestLogWriter) replayOne(ctx context.Context) bool {
	seg, recs, err := w.spool.oldest()
	if err != nil {
		// A torn or corrupt tail: what could be read is in recs.
		w.log.Error("request log: reading the spool", "segment", seg.path, "err", err)
	}
	if seg.path == "" {
		return true
	}
	for i, rows := range recs {
		start := time.Now()
		n, err := w.write(ctx, rows, true)
		if err != nil {
			w.markDown(err)
			if i > 0 || n > 0 {
				rest := append([][]RequestLogEntry{rows[n:]}, recs[i+1:]...)
				if rerr := w.spool.rewrite(seg, rest); rerr != nil {
					w.log.Error("request log: rewriting a spool segment; rows already written may be written again", "err", rerr)
				}
				w.spoolBytes.Store(w.spool.bytes())
			}
			return false
		}
		w.markUp(0, time.Since(start))
	}
	if err := w.spool.remove(seg); err != nil {
		w.log.Error("request log: removing a replayed spool segment", "err", err)
	}
	w.spoolBytes.Store(w.spool.bytes())
	return true
}

// write COPYs rows. A batch that Postgres rejects because of its data is
// split in halves until the bad rows are alone, and those are dropped. On
// a transient error it returns how many leading rows were handled
// (written or dropped) before it.
func (w *RequestLogWriter) write(ctx context.Context, rows []RequestLogEntry, replay bool) (int, error) {
	if len(rows) == 0 {
		return 0, nil
	}
	err := w.copy(ctx, rows, replay)
	if err == nil {
		return len(rows), nil
	}
	if !isRowError(err) {
		return 0, err
	}
	if len(rows) == 1 {
		w.dropBad.Add(1)
		if w.badErr == nil {
			w.badErr = err
		}
		return 1, nil
	}
	mid := len(rows) / 2
	n, err := w.write(ctx, rows[:mid], replay)
	if err != nil {
		return n, err
	}
	n, err = w.write(ctx, rows[mid:], replay)
	return mid + n, err
}

var requestLogColumns = []string{
	"time", "node_id", "route_id", "method", "host", "path", "query", "status",
	"upstream", "upstream_status", "latency_us", "upstream_latency_us",
	"bytes_in", "bytes_out", "client_ip", "user_agent", "request_id", "trace_id", "consumer",
}

func (w *RequestLogWriter) copy(ctx context.Context, rows []RequestLogEntry, replay bool) error {
	ctx, cancel := context.WithTimeout(ctx, requestLogCopyTimeout)
	defer cancel()
	w.src.reset(rows)
	n, err := w.pool.CopyFrom(ctx, pgx.Identifier{"request_logs"}, requestLogColumns, &w.src)
	if err != nil {
		w.copyErrors.Add(1)
		return fmt.Errorf("copying request logs: %w", err)
	}
	w.batches.Add(1)
	w.written.Add(uint64(n))
	if replay {
		w.replayed.Add(uint64(n))
	}
	return nil
}

// isRowError reports whether Postgres rejected a COPY because of the
// values of a row (data exceptions, class 22, and constraint violations,
// class 23), which splitting the batch can isolate. Anything else (a
// connection, timeout, shutdown or schema problem) is transient: the batch
// is retried or spooled, never dropped.
func isRowError(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || len(pgErr.Code) != 5 {
		return false
	}
	switch pgErr.Code[:2] {
	case "22", "23":
		return true
	}
	return false
}

// report logs drops and bad rows at most once per requestLogReportEvery
// (or now, when final).
func (w *RequestLogWriter) report(final bool) {
	now := time.Now()
	if !final && now.Sub(w.reportAt) < requestLogReportEvery {
		return
	}
	cur := w.Stats().Dropped
	prev := w.reported
	if cur == prev {
		return
	}
	w.reported, w.reportAt = cur, now
	attrs := []any{
		"queue_full", cur.QueueFull - prev.QueueFull,
		"spool_full", cur.SpoolFull - prev.SpoolFull,
		"bad_row", cur.BadRow - prev.BadRow,
		"shutdown", cur.Shutdown - prev.Shutdown,
		"total", cur.Total(),
	}
	if w.badErr != nil {
		attrs = append(attrs, "bad_row_err", w.badErr)
		w.badErr = nil
	}
	w.log.Warn("request log entries dropped", attrs...)
}

// maintainLoop runs partition maintenance at once and every
// MaintainInterval.
func (w *RequestLogWriter) maintainLoop(ctx context.Context) {
	for {
		wait := w.cfg.MaintainInterval
		if err := w.maintain(ctx); err != nil && ctx.Err() == nil {
			// Typically the database is down; retry sooner than the
			// interval, partitions exist only a few days ahead.
			wait = min(wait, time.Minute)
			w.log.Warn("request log partition maintenance failed", "err", err, "retry_in", wait)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (w *RequestLogWriter) maintain(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var retention any // NULL keeps everything
	if w.cfg.Retention > 0 {
		retention = w.cfg.Retention
	}
	rows, err := w.pool.Query(ctx, `SELECT o_action, coalesce(o_partition, '') FROM isekai_request_logs_maintain($1, $2)`,
		requestLogDaysAhead, retention)
	if err != nil {
		return translate("maintaining request log partitions", err)
	}
	var action, part string
	_, err = pgx.ForEachRow(rows, []any{&action, &part}, func() error {
		if action != "busy" {
			w.log.Info("request log partition "+action, "partition", part)
		}
		return nil
	})
	if err != nil {
		return translate("maintaining request log partitions", err)
	}
	return nil
}

// requestLogSource is the pgx.CopyFromSource over a batch. Its values are
// pointers to pgtype values it reuses for every row, which pgx encodes
// through their Valuer interfaces: no allocation per row on our side.
type requestLogSource struct {
	rows   []RequestLogEntry
	i      int
	nodeID string
	vals   []any
	r      struct {
		time                                        pgtype.Timestamptz
		nodeID, method, host, path, query, upstream pgtype.Text
		userAgent, requestID, traceID, consumer     pgtype.Text
		routeID                                     pgtype.UUID
		status, upstreamStatus                      pgtype.Int4
		latency, upstreamLatency, bytesIn, bytesOut pgtype.Int8
		clientIP                                    inetValue
	}
}

func (s *requestLogSource) init(nodeID string) {
	s.nodeID = nodeID
	r := &s.r
	s.vals = []any{
		&r.time, &r.nodeID, &r.routeID, &r.method, &r.host, &r.path, &r.query, &r.status,
		&r.upstream, &r.upstreamStatus, &r.latency, &r.upstreamLatency,
		&r.bytesIn, &r.bytesOut, &r.clientIP, &r.userAgent, &r.requestID, &r.traceID, &r.consumer,
	}
}

func (s *requestLogSource) reset(rows []RequestLogEntry) { s.rows, s.i = rows, 0 }

// Next implements pgx.CopyFromSource.
func (s *requestLogSource) Next() bool {
	if s.i >= len(s.rows) {
		return false
	}
	s.i++
	return true
}

// Err implements pgx.CopyFromSource.
func (s *requestLogSource) Err() error { return nil }

// Values implements pgx.CopyFromSource.
func (s *requestLogSource) Values() ([]any, error) {
	e := &s.rows[s.i-1]
	r := &s.r
	r.time = pgtype.Timestamptz{Time: e.Time, Valid: true}
	nodeID := e.NodeID
	if nodeID == "" {
		nodeID = s.nodeID
	}
	setText(&r.nodeID, nodeID, true)
	r.routeID = pgtype.UUID{Bytes: e.RouteID, Valid: e.RouteID != uuid.Nil}
	setText(&r.method, e.Method, true)
	setText(&r.host, e.Host, true)
	setText(&r.path, e.Path, true)
	setText(&r.query, e.Query, false)
	r.status = pgtype.Int4{Int32: clampInt32(e.Status), Valid: true}
	setText(&r.upstream, e.Upstream, false)
	r.upstreamStatus = pgtype.Int4{Int32: clampInt32(e.UpstreamStatus), Valid: e.UpstreamStatus != 0}
	r.latency = pgtype.Int8{Int64: e.Latency.Microseconds(), Valid: true}
	r.upstreamLatency = pgtype.Int8{Int64: e.UpstreamLatency.Microseconds(), Valid: e.UpstreamLatency != 0}
	r.bytesIn = pgtype.Int8{Int64: e.BytesIn, Valid: true}
	r.bytesOut = pgtype.Int8{Int64: e.BytesOut, Valid: true}
	r.clientIP.addr = e.ClientIP
	setText(&r.userAgent, e.UserAgent, false)
	setText(&r.requestID, e.RequestID, true)
	setText(&r.traceID, e.TraceID, false)
	setText(&r.consumer, e.Consumer, false)
	return s.vals, nil
}

// setText stores s, made valid for a Postgres text column; an empty s is
// NULL unless notNull.
func setText(t *pgtype.Text, s string, notNull bool) {
	*t = pgtype.Text{String: cleanText(s), Valid: notNull || s != ""}
}

// cleanText replaces what Postgres text rejects, NUL bytes and invalid
// UTF-8, with U+FFFD. Clients control paths and headers: left alone, such a
// value would fail its whole batch and cost a split on every request.
func cleanText(s string) string {
	if strings.IndexByte(s, 0) < 0 && utf8.ValidString(s) {
		return s
	}
	return strings.ReplaceAll(strings.ToValidUTF8(s, "\uFFFD"), "\x00", "\uFFFD")
}

func clampInt32(v int) int32 {
	return int32(min(max(v, math.MinInt32), math.MaxInt32))
}

// inetValue encodes a netip.Addr as inet, the zero Addr as NULL, without
// the allocation of pgx's netip.Addr wrapper.
type inetValue struct{ addr netip.Addr }

// NetipPrefixValue implements pgtype.NetipPrefixValuer.
func (v *inetValue) NetipPrefixValue() (netip.Prefix, error) {
	if !v.addr.IsValid() {
		return netip.Prefix{}, nil
	}
	return netip.PrefixFrom(v.addr.WithZone(""), v.addr.BitLen()), nil
}
