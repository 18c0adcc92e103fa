package events

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"math"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// The spool holds request-log batches on disk while Postgres is
// unreachable. It is a directory of segment files named by a 16-digit
// sequence number (NNNNNNNNNNNNNNNN.seg), replayed in that order. A segment
// is a series of records, one per batch:
//
//	uint32 length of payload (big endian) | uint32 CRC-32C of payload | payload
//
// and a payload is uvarint(row count) followed by the rows (see
// appendSpoolEntry). A segment is fsynced when it is closed: when it reaches
// its size, before it is replayed, and at Stop. A torn record at the end of
// a segment (a crash while writing it) is detected by its length or CRC and
// ignored with what follows it.
type requestLogSpool struct {
	dir       string
	maxBytes  int64 // bound on all segments together
	segBytes  int64 // a segment is closed once it holds this much
	closed    []spoolSegment
	active    *os.File // the segment being appended to; nil when none
	activeSeg spoolSegment
	size      int64 // bytes in every segment, the active one included
	seq       uint64
	buf       []byte
}

type spoolSegment struct {
	path string
	size int64
}

const (
	spoolSuffix      = ".seg"
	spoolTmpSuffix   = ".tmp"
	spoolMaxSegment  = 4 << 20
	spoolMinSegment  = 4 << 10
	spoolRecordHead  = 8
	spoolMaxRecord   = 1 << 30
	spoolFileMode    = 0o600
	spoolDirFileMode = 0o700
)

var spoolCRC = crc32.MakeTable(crc32.Castagnoli)

// openRequestLogSpool opens (creating it if needed) the spool in dir and
// lists the segments a previous run left.
func openRequestLogSpool(dir string, maxBytes int64) (*requestLogSpool, error) {
	if err := os.MkdirAll(dir, spoolDirFileMode); err != nil {
		return nil, fmt.Errorf("creating request log spool: %w", err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("reading request log spool: %w", err)
	}
	s := &requestLogSpool{
		dir:      dir,
		maxBytes: maxBytes,
		segBytes: min(max(maxBytes/4, spoolMinSegment), spoolMaxSegment),
	}
	for _, e := range entries { // sorted by name, hence by sequence
		name := e.Name()
		if strings.HasSuffix(name, spoolTmpSuffix) {
			// An interrupted rewrite; the segment it was replacing is intact.
			_ = os.Remove(filepath.Join(dir, name))
			continue
		}
		seq, err := strconv.ParseUint(strings.TrimSuffix(name, spoolSuffix), 10, 64)
		if !strings.HasSuffix(name, spoolSuffix) || err != nil || !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return nil, fmt.Errorf("reading request log spool: %w", err)
		}
		s.closed = append(s.closed, spoolSegment{path: filepath.Join(dir, name), size: info.Size()})
		s.size += info.Size()
		s.seq = max(s.seq, seq)
	}
	return s, nil
}

func (s *requestLogSpool) empty() bool { return len(s.closed) == 0 && s.active == nil }

func (s *requestLogSpool) bytes() int64 { return s.size }

// append writes rows as one record. It returns false, writing nothing, when
// the record would take the spool beyond its size.
func (s *requestLogSpool) append(rows []RequestLogEntry) (bool, error) {
	s.buf = encodeSpoolRecord(s.buf[:0], rows)
	n := int64(len(s.buf))
	if s.size+n > s.maxBytes {
		return false, nil
	}
	if s.active == nil {
		s.seq++
		path := filepath.Join(s.dir, fmt.Sprintf("%016d%s", s.seq, spoolSuffix))
		f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, spoolFileMode)
		if err != nil {
			return false, fmt.Errorf("creating spool segment: %w", err)
		}
		s.active, s.activeSeg = f, spoolSegment{path: path}
	}
	if _, err := s.active.Write(s.buf); err != nil {
		// Cut the partial record off, so the segment stays readable.
		_ = s.active.Truncate(s.activeSeg.size)
		_, _ = s.active.Seek(s.activeSeg.size, 0)
		return false, fmt.Errorf("writing spool segment: %w", err)
	}
	s.activeSeg.size += n
	s.size += n
	if s.activeSeg.size >= s.segBytes {
		return true, s.closeActive()
	}
	return true, nil
}

// closeActive fsyncs and closes the active segment, which becomes the
// newest closed one.
func (s *requestLogSpool) closeActive() error {
	if s.active == nil {
		return nil
	}
	f := s.active
	s.active = nil
	s.closed = append(s.closed, s.activeSeg)
	err := f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = syncDir(s.dir) // the new file's directory entry
	}
	if err != nil {
		return fmt.Errorf("closing spool segment: %w", err)
	}
	return nil
}

// close fsyncs and closes the active segment; the spool stays on disk for
// the next run.
func (s *requestLogSpool) close() error { return s.closeActive() }

// oldest reads the oldest segment, closing the active one first if it is
// the only one. A zero segment means the spool is empty. A read error comes
// with the records read before it.
func (s *requestLogSpool) oldest() (spoolSegment, [][]RequestLogEntry, error) {
	if len(s.closed) == 0 {
		if s.active == nil {
			return spoolSegment{}, nil, nil
		}
		if err := s.closeActive(); err != nil {
			return spoolSegment{}, nil, err
		}
	}
	seg := s.closed[0]
	data, err := os.ReadFile(seg.path)
	if err != nil {
		return seg, nil, fmt.Errorf("reading spool segment: %w", err)
	}
	var recs [][]RequestLogEntry
	for len(data) > 0 {
		rows, rest, err := decodeSpoolRecord(data)
		if err != nil {
			return seg, recs, fmt.Errorf("spool segment %s: %w; %d bytes ignored", filepath.Base(seg.path), err, len(data))
		}
		recs = append(recs, rows)
		data = rest
	}
	return seg, recs, nil
}

// remove deletes the oldest segment, seg, once it has been replayed.
func (s *requestLogSpool) remove(seg spoolSegment) error {
	if len(s.closed) == 0 || s.closed[0].path != seg.path {
		return errors.New("removing spool segment: not the oldest")
	}
	s.closed = s.closed[1:]
	s.size -= seg.size
	if err := os.Remove(seg.path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return nil
}

// rewrite replaces the oldest segment, seg, with the records still to be
// replayed: written to a temporary file, fsynced, renamed over it.
func (s *requestLogSpool) rewrite(seg spoolSegment, recs [][]RequestLogEntry) error {
	var buf []byte
	for _, rows := range recs {
		if len(rows) > 0 {
			buf = encodeSpoolRecord(buf, rows)
		}
	}
	if len(buf) == 0 {
		return s.remove(seg)
	}
	if len(s.closed) == 0 || s.closed[0].path != seg.path {
		return errors.New("rewriting spool segment: not the oldest")
	}
	tmp := seg.path + spoolTmpSuffix
	err := writeFileSync(tmp, buf)
	if err == nil {
		err = os.Rename(tmp, seg.path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return err
	}
	_ = syncDir(s.dir)
	s.size += int64(len(buf)) - seg.size
	s.closed[0].size = int64(len(buf))
	return nil
}

func writeFileSync(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, spoolFileMode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// encodeSpoolRecord appends one record holding rows to buf.
func encodeSpoolRecord(buf []byte, rows []RequestLogEntry) []byte {
	start := len(buf)
	buf = append(buf, make([]byte, spoolRecordHead)...)
	buf = binary.AppendUvarint(buf, uint64(len(rows)))
	for i := range rows {
		buf = appendSpoolEntry(buf, &rows[i])
	}
	payload := buf[start+spoolRecordHead:]
	binary.BigEndian.PutUint32(buf[start:], uint32(len(payload)))
	binary.BigEndian.PutUint32(buf[start+4:], crc32.Checksum(payload, spoolCRC))
	return buf
}

// decodeSpoolRecord reads the record at the start of data.
func decodeSpoolRecord(data []byte) ([]RequestLogEntry, []byte, error) {
	if len(data) < spoolRecordHead {
		return nil, nil, errors.New("torn record header")
	}
	n := binary.BigEndian.Uint32(data)
	sum := binary.BigEndian.Uint32(data[4:])
	if n > spoolMaxRecord || int(n) > len(data)-spoolRecordHead {
		return nil, nil, errors.New("torn record")
	}
	payload := data[spoolRecordHead : spoolRecordHead+int(n)]
	if crc32.Checksum(payload, spoolCRC) != sum {
		return nil, nil, errors.New("record checksum mismatch")
	}
	d := spoolDecoder{b: payload}
	count := d.uvarint()
	if d.err == nil && count > uint64(len(payload)) {
		d.err = errors.New("bad row count")
	}
	rows := make([]RequestLogEntry, 0, min(count, uint64(len(payload))))
	for i := uint64(0); i < count && d.err == nil; i++ {
		var e RequestLogEntry
		d.entry(&e)
		rows = append(rows, e)
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = errors.New("trailing bytes in record")
	}
	if d.err != nil {
		return nil, nil, d.err
	}
	return rows, data[spoolRecordHead+int(n):], nil
}

// appendSpoolEntry encodes one row: time as varint seconds and uvarint
// nanoseconds, strings as uvarint length and bytes, integers as varints,
// the route id as 16 bytes and the client IP as its length-prefixed
// netip binary form (empty for none).
func appendSpoolEntry(b []byte, e *RequestLogEntry) []byte {
	b = binary.AppendVarint(b, e.Time.Unix())
	b = binary.AppendUvarint(b, uint64(e.Time.Nanosecond()))
	b = appendSpoolString(b, e.NodeID)
	b = append(b, e.RouteID[:]...)
	for _, s := range [...]string{e.Method, e.Host, e.Path, e.Query} {
		b = appendSpoolString(b, s)
	}
	b = binary.AppendVarint(b, int64(clampInt32(e.Status)))
	b = appendSpoolString(b, e.Upstream)
	b = binary.AppendVarint(b, int64(clampInt32(e.UpstreamStatus)))
	b = binary.AppendVarint(b, int64(e.Latency))
	b = binary.AppendVarint(b, int64(e.UpstreamLatency))
	b = binary.AppendVarint(b, e.BytesIn)
	b = binary.AppendVarint(b, e.BytesOut)
	ip, _ := e.ClientIP.MarshalBinary() // never fails
	b = binary.AppendUvarint(b, uint64(len(ip)))
	b = append(b, ip...)
	for _, s := range [...]string{e.UserAgent, e.RequestID, e.TraceID, e.Consumer} {
		b = appendSpoolString(b, s)
	}
	return b
}

func appendSpoolString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// spoolDecoder reads what appendSpoolEntry wrote; the first error sticks.
type spoolDecoder struct {
	b   []byte
	err error
}

func (d *spoolDecoder) entry(e *RequestLogEntry) {
	sec, nsec := d.varint(), d.uvarint()
	if nsec >= uint64(time.Second) {
		d.fail()
	}
	e.Time = time.Unix(sec, int64(nsec))
	e.NodeID = d.string()
	copy(e.RouteID[:], d.bytes(16))
	e.Method, e.Host, e.Path, e.Query = d.string(), d.string(), d.string(), d.string()
	e.Status = d.int()
	e.Upstream = d.string()
	e.UpstreamStatus = d.int()
	e.Latency = time.Duration(d.varint())
	e.UpstreamLatency = time.Duration(d.varint())
	e.BytesIn, e.BytesOut = d.varint(), d.varint()
	if ip := d.bytes(int(min(d.uvarint(), 64))); len(ip) > 0 && d.err == nil {
		var a netip.Addr
		if err := a.UnmarshalBinary(ip); err != nil {
			d.fail()
		}
		e.ClientIP = a
	}
	e.UserAgent, e.RequestID, e.TraceID, e.Consumer = d.string(), d.string(), d.string(), d.string()
}

func (d *spoolDecoder) fail() {
	if d.err == nil {
		d.err = errors.New("malformed row")
	}
	d.b = nil
}

func (d *spoolDecoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *spoolDecoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *spoolDecoder) int() int {
	v := d.varint()
	if v < math.MinInt32 || v > math.MaxInt32 {
		d.fail()
		return 0
	}
	return int(v)
}

func (d *spoolDecoder) bytes(n int) []byte {
	if n < 0 || n > len(d.b) {
		d.fail()
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *spoolDecoder) string() string {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return ""
	}
	return string(d.bytes(int(n)))
}
