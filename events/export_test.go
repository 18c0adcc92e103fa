package events

// ReadQuery exposes the statement PostgresStore.Read runs, so that tests
// can EXPLAIN the query itself rather than a copy of it.
func ReadQuery(f Filter) (string, []any) {
	q, args, _ := readQuery(f)
	return q, args
}
