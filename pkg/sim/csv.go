package sim

import (
	"bufio"
	"compress/gzip"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// table reads a CSV file with a header row and names the file, line and
// column of anything it cannot read, so a user can find and fix the row.
type table struct {
	file   string
	r      *csv.Reader
	cols   map[string]int
	header []string
	row    []string
	// pending is a first row that held data, not a header (positional).
	pending []string
	err     error
}

func openTable(path string, required ...string) (*table, func() error, error) {
	return openPositionalTable(path, nil, required...)
}

// openPositionalTable is openTable for formats whose files may also come
// without a header: a first row whose required columns (the first of
// positional) hold numbers is data, its columns named by position.
func openPositionalTable(path string, positional []string, required ...string) (*table, func() error, error) {
	f, err := openTraceFile(path)
	if err != nil {
		return nil, nil, err
	}
	t, err := newTable(path, f, positional, required...)
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return t, f.Close, nil
}

// openTraceFile opens a trace, reading through gzip when the file is
// compressed (told by its magic bytes, not its name): published traces are
// often shipped as .csv.gz, and unpacking a multi-gigabyte file first only
// to read it once is a step a user should not need.
func openTraceFile(path string) (io.ReadCloser, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(f)
	if magic, err := br.Peek(2); err != nil || magic[0] != 0x1f || magic[1] != 0x8b {
		return readCloser{br, f.Close}, nil
	}
	zr, err := gzip.NewReader(br)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: the file starts as gzip but its header cannot be read (%v); decompress it with gunzip to see what it holds", path, err)
	}
	return readCloser{zr, func() error {
		zerr := zr.Close()
		if err := f.Close(); err != nil {
			return err
		}
		return zerr
	}}, nil
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r readCloser) Close() error { return r.close() }

func newTable(name string, r io.Reader, positional []string, required ...string) (*table, error) {
	cr := csv.NewReader(skipBOM(r))
	cr.TrimLeadingSpace = true
	cr.ReuseRecord = false
	header, err := cr.Read()
	if err == io.EOF {
		return nil, fmt.Errorf("%s: empty file: expected a header row with columns %s", name, strings.Join(required, ","))
	}
	if err != nil {
		return nil, csvError(name, err)
	}
	t := &table{file: name, r: cr, cols: map[string]int{}, header: header}
	if positional != nil && numericPrefix(header, len(required)) {
		if len(header) > len(positional) {
			return nil, fmt.Errorf("%s:1: a row without a header has %d columns, more than the %d this format has (%s); add a header row naming them", name, len(header), len(positional), strings.Join(positional, ","))
		}
		t.pending, t.header = header, positional[:len(header)]
	}
	for i, h := range t.header {
		// Which of two equal columns is read would be a guess (unnamed
		// ones, as a pandas index, are never read).
		if j, dup := t.cols[columnName(h)]; dup && columnName(h) != "" {
			return nil, fmt.Errorf("%s:1: columns %d and %d are both %s; keep one", name, j+1, i+1, columnName(h))
		}
		t.cols[columnName(h)] = i
	}
	var missing []string
	for _, c := range required {
		if _, ok := t.cols[c]; !ok {
			missing = append(missing, c)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("%s:1: header lacks column(s) %s; expected columns %s%s", name, strings.Join(missing, ", "), strings.Join(required, ","), separatorHint(header))
	}
	return t, nil
}

// columnName is the column a header cell names. Both formats name their
// columns in lower case; a spreadsheet's " Timestamp" means the same column.
func columnName(h string) string { return strings.ToLower(strings.TrimSpace(h)) }

func csvError(name string, err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		fix := ""
		switch {
		case errors.Is(pe.Err, csv.ErrFieldCount):
			fix = ": every row needs as many comma-separated columns as the first"
		case errors.Is(pe.Err, csv.ErrQuote), errors.Is(pe.Err, csv.ErrBareQuote):
			fix = `: quote a whole field ("a,b") and double a quote inside one ("")`
		}
		return fmt.Errorf("%s:%d:%d: %v%s", name, pe.Line, pe.Column, pe.Err, fix)
	}
	return fmt.Errorf("%s: %w", name, err)
}

// separatorHint names the separator a first row seems to use instead of
// commas, for errors about a file whose columns could not be found.
func separatorHint(first []string) string {
	if len(first) != 1 {
		return ""
	}
	for _, sep := range []string{"\t", ";", "|"} {
		if strings.Contains(first[0], sep) {
			return fmt.Sprintf(" (the file seems to separate its columns with %q; use commas)", sep)
		}
	}
	return ""
}

// next advances to the next row; false at the end or on an error (see err).
func (t *table) next() bool {
	if t.err != nil {
		return false
	}
	if t.pending != nil {
		t.row, t.pending = t.pending, nil
		return true
	}
	row, err := t.r.Read()
	if err == io.EOF {
		return false
	}
	if err != nil {
		t.err = csvError(t.file, err)
		return false
	}
	t.row = row
	return true
}

// line is the current row's line in the file.
func (t *table) line() int {
	l, _ := t.r.FieldPos(0)
	return l
}

// fail records an error about a column of the current row; only the first
// error is kept.
func (t *table) fail(col, format string, args ...any) {
	if t.err != nil {
		return
	}
	line, c := t.line(), 0
	if i, ok := t.cols[col]; ok {
		c = i + 1
	}
	t.err = fmt.Errorf("%s:%d: column %d (%s): %s", t.file, line, c, col, fmt.Sprintf(format, args...))
}

func (t *table) str(col string) string {
	i, ok := t.cols[col]
	if !ok || i >= len(t.row) {
		return ""
	}
	return strings.TrimSpace(t.row[i])
}

// name reads a non-empty name that no earlier row used; seen maps names to
// their lines.
func (t *table) name(col, what string, seen map[string]int) (string, bool) {
	name := t.str(col)
	if name == "" {
		t.fail(col, "%s name is empty", what)
		return "", false
	}
	if prev, ok := seen[name]; ok {
		t.fail(col, "%s %q already appears on line %d", what, name, prev)
		return "", false
	}
	seen[name] = t.line()
	return name, true
}

// int64 reads an integer in [lo, hi]; empty reads as def.
func (t *table) int64(col string, lo, hi, def int64) int64 {
	s := t.str(col)
	if s == "" {
		return def
	}
	v, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		// Traces written by pandas sometimes carry integral floats ("12.0").
		f, ferr := strconv.ParseFloat(s, 64)
		huge := errors.Is(ferr, strconv.ErrRange)
		if (ferr != nil && !huge) || math.IsNaN(f) || (math.IsInf(f, 0) && !huge) || f != math.Trunc(f) {
			t.fail(col, "%q is not an integer", s)
			return def
		}
		// A whole number past int64 (1e30) is a value out of range, not
		// one that is not an integer.
		if f < float64(lo) || f > float64(hi) {
			t.fail(col, "%s is out of range %d..%d", s, lo, hi)
			return def
		}
		v = int64(f)
	}
	if v < lo || v > hi {
		t.fail(col, "%d is out of range %d..%d", v, lo, hi)
		return def
	}
	return v
}

// float reads a finite number >= lo; empty reads as def.
func (t *table) float(col string, lo, def float64) float64 {
	s := t.str(col)
	if s == "" {
		return def
	}
	v, err := strconv.ParseFloat(s, 64)
	switch {
	case errors.Is(err, strconv.ErrRange):
		t.fail(col, "%q is out of range", s)
		return def
	case err != nil, math.IsNaN(v), math.IsInf(v, 0):
		t.fail(col, "%q is not a finite number", s)
		return def
	}
	if v < lo {
		t.fail(col, "%v is below %v", v, lo)
		return def
	}
	return v
}

// MaxTraceSeconds bounds a trace's times and durations: a hundred years,
// well within what a time.Duration holds (292 years), so that a typo such as
// 9999999999999 is reported instead of wrapping round to a negative bill.
const MaxTraceSeconds = 100 * 365 * 24 * 3600

// seconds reads a time or duration in seconds, 0 to MaxTraceSeconds; empty
// reads as def.
func (t *table) seconds(col string, def float64) float64 {
	v := t.float(col, 0, def)
	if v > MaxTraceSeconds {
		t.fail(col, "%v s is more than a hundred years; times are in seconds", v)
		return def
	}
	return v
}

// required fails on an empty column.
func (t *table) required(cols ...string) {
	for _, c := range cols {
		if t.str(c) == "" {
			t.fail(c, "is empty; every row needs it")
		}
	}
}

// instantLayouts are the date-times a time column may hold instead of
// seconds, as traces cut from raw cluster logs keep them (Philly's job log
// writes "2017-10-03 03:03:46"). Fractional seconds may follow the seconds.
var instantLayouts = []string{time.RFC3339, "2006-01-02 15:04:05Z07:00", "2006-01-02T15:04:05", "2006-01-02 15:04:05", "2006/01/02 15:04:05"}

// parseInstant reads a date-time of instantLayouts. One without a zone reads
// as UTC: a trace only needs the times between its rows.
func parseInstant(s string) (time.Time, bool) {
	for _, l := range instantLayouts {
		if at, err := time.Parse(l, s); err == nil {
			return at, true
		}
	}
	return time.Time{}, false
}

// instant reads a point in time as seconds: a number >= 0, or a date-time
// (dated then says so, and the seconds count from the Unix epoch). Empty
// reads as 0.
func (t *table) instant(col string) (seconds float64, dated bool) {
	s := t.str(col)
	// Seconds first: most traces hold them, on every row.
	if _, err := strconv.ParseFloat(s, 64); s == "" || err == nil || errors.Is(err, strconv.ErrRange) {
		return t.float(col, 0, 0), false
	}
	if at, ok := parseInstant(s); ok {
		// UnixNano would overflow past 2262.
		return float64(at.Unix()) + float64(at.Nanosecond())/1e9, true
	}
	t.fail(col, "%q is neither seconds nor a date-time such as 2017-10-03 03:03:46 or 2017-10-03T03:03:46Z", s)
	return 0, false
}

// instantKinds holds where a file first wrote a time column in seconds and
// where as a date-time: a file writes its times one way.
type instantKinds struct{ firstSeconds, firstDated int }

// check fails the row if it writes col the other way from an earlier row.
func (k *instantKinds) check(t *table, col string, dated bool) {
	if dated && k.firstDated == 0 {
		k.firstDated = t.line()
	} else if !dated && k.firstSeconds == 0 {
		k.firstSeconds = t.line()
	}
	if k.firstSeconds > 0 && k.firstDated > 0 {
		t.fail(col, "line %d holds seconds and line %d a date-time; write every timestamp one way", k.firstSeconds, k.firstDated)
	}
}

// numericPrefix says whether row's first n fields are numbers or date-times
// (a data row, not a header).
func numericPrefix(row []string, n int) bool {
	if len(row) < n {
		return false
	}
	for _, f := range row[:n] {
		f = strings.TrimSpace(f)
		if _, err := strconv.ParseFloat(f, 64); err != nil {
			if _, ok := parseInstant(f); !ok {
				return false
			}
		}
	}
	return true
}

// skipBOM drops the byte-order mark that files saved by spreadsheets start
// with. It goes before the CSV reader sees the file: after a mark, a quoted
// first field ("\ufeff\"name\",...", as pandas writes with utf-8-sig and
// QUOTE_ALL) would read as a bare quote.
func skipBOM(r io.Reader) io.Reader {
	br := bufio.NewReader(r)
	if b, err := br.Peek(3); err == nil && string(b) == "\ufeff" {
		_, _ = br.Discard(3)
	}
	return br
}
