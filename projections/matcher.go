package projections

import (
	"slices"
	"strings"

	"github.com/google/uuid"
)

// The matcher is a segment trie per host group, compiled once per table and
// then only read: lookups share it across goroutines without locks and
// allocate nothing.
//
// Precedence, from DESIGN.md "The data path":
//
//  1. Host group: routes for the exact host (with the request's port, then
//     without), then "*.suffix" wildcards, longest suffix first, then
//     host-less routes. A less specific group is consulted only when the
//     more specific one has no route for the request at all.
//  2. Within a group, the route matching more path segments wins; at equal
//     depth, static segments beat parameters, compared left to right.
//  3. Among routes of the same path shape: an explicit method set beats
//     any-method, then higher priority, then earlier CreatedAt, then ID.
//
// The table build leaves out routes that claim the same host, method and
// path as an earlier one, so the routes of one node accept disjoint
// methods and rule 3 decides nothing in a built table; it only makes the
// order in which a node's routes are tried deterministic.

// Standard methods get one bit each so that the common check is a mask test.
const (
	methodGet uint16 = 1 << iota
	methodHead
	methodPost
	methodPut
	methodPatch
	methodDelete
	methodConnect
	methodOptions
	methodTrace
)

func methodBit(m string) uint16 {
	switch m {
	case "GET":
		return methodGet
	case "HEAD":
		return methodHead
	case "POST":
		return methodPost
	case "PUT":
		return methodPut
	case "PATCH":
		return methodPatch
	case "DELETE":
		return methodDelete
	case "CONNECT":
		return methodConnect
	case "OPTIONS":
		return methodOptions
	case "TRACE":
		return methodTrace
	}
	return 0
}

// methodSet is a route's compiled Methods.
type methodSet struct {
	any   bool     // no methods listed: every method
	mask  uint16   // standard methods
	other []string // other tokens, sorted
}

func newMethodSet(methods []string) methodSet {
	if len(methods) == 0 {
		return methodSet{any: true}
	}
	var s methodSet
	for _, m := range methods {
		if b := methodBit(m); b != 0 {
			s.mask |= b
		} else if !slices.Contains(s.other, m) {
			s.other = append(s.other, m)
		}
	}
	slices.Sort(s.other)
	return s
}

// has reports whether the set accepts method, whose bit is bit.
func (s *methodSet) has(method string, bit uint16) bool {
	if s.any {
		return true
	}
	if bit != 0 {
		return s.mask&bit != 0
	}
	for _, o := range s.other {
		if o == method {
			return true
		}
	}
	return false
}

// overlaps reports whether some method is in both sets.
func (s *methodSet) overlaps(o methodSet) bool {
	if s.any || o.any || s.mask&o.mask != 0 {
		return true
	}
	for _, m := range s.other {
		if slices.Contains(o.other, m) {
			return true
		}
	}
	return false
}

// entry is a route at the trie node where its path ends.
type entry struct {
	route   *Route
	methods methodSet
}

// node is one trie node: a path prefix, as a sequence of static segments
// and parameters.
type node struct {
	// Static children: a short list scanned in order while there are few
	// (cheaper to build and to search than a map), a map beyond that.
	children []child
	static   map[string]*node
	param    *node
	// entries are the routes whose path ends here, best first.
	entries []entry
	// maxDepth is the depth of the deepest route in this subtree; a lookup
	// skips subtrees that cannot beat what it has found.
	maxDepth int
}

type child struct {
	segment string
	node    *node
}

// maxListedChildren is where a node's static children move to a map.
const maxListedChildren = 8

func (n *node) staticChild(segment string) *node {
	if n.static != nil {
		return n.static[segment]
	}
	for i := range n.children {
		if n.children[i].segment == segment {
			return n.children[i].node
		}
	}
	return nil
}

// lookup returns the node of a path shape, or nil.
func (n *node) lookup(segs []pathSegment) *node {
	for _, s := range segs {
		if s.param {
			n = n.param
		} else {
			n = n.staticChild(s.literal)
		}
		if n == nil {
			return nil
		}
	}
	return n
}

// overlapping returns the first entry other than id whose methods overlap:
// the route a new one at this node would conflict with.
func (n *node) overlapping(id uuid.UUID, methods methodSet) *Route {
	for _, e := range n.entries {
		if e.route.ID != id && e.methods.overlaps(methods) {
			return e.route
		}
	}
	return nil
}

func compareEntries(a, b entry) int {
	if a.methods.any != b.methods.any {
		if b.methods.any {
			return -1
		}
		return 1
	}
	if a.route.Priority != b.route.Priority {
		if a.route.Priority > b.route.Priority {
			return -1
		}
		return 1
	}
	return compareCreated(a.route, b.route)
}

// compareCreated orders routes by CreatedAt, then ID: the table's listing
// order, and "earlier wins" wherever two routes tie.
func compareCreated(a, b *Route) int {
	if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
		return c
	}
	return compareIDs(a.ID, b.ID)
}

func compareIDs(a, b uuid.UUID) int { return strings.Compare(string(a[:]), string(b[:])) }

// found is the best route a lookup has seen so far.
type found struct {
	route *Route
	depth int // segments matched; -1 when nothing yet
	end   int // bytes of the path matched
}

// find searches the subtree of n, which has matched path[:pos] (pos is
// len(path) or the index of a '/') at the given depth. Static children are
// tried before the parameter child, and a result replaces the best one only
// when it is strictly deeper: at equal depth the first found has a static
// segment where the later one has a parameter, which is the precedence.
func (n *node) find(path string, pos, depth int, method string, bit uint16, best *found) {
	if depth > best.depth {
		for i := range n.entries {
			if n.entries[i].methods.has(method, bit) {
				best.route, best.depth, best.end = n.entries[i].route, depth, pos
				break
			}
		}
	}
	if pos >= len(path) {
		return
	}
	start := pos + 1
	end := strings.IndexByte(path[start:], '/')
	if end < 0 {
		end = len(path)
	} else {
		end += start
	}
	seg := path[start:end]
	if c := n.staticChild(seg); c != nil && c.maxDepth > best.depth {
		c.find(path, end, depth+1, method, bit, best)
	}
	if c := n.param; c != nil && seg != "" && c.maxDepth > best.depth {
		c.find(path, end, depth+1, method, bit, best)
	}
}

// matcher holds the tries of one table, one per host group.
type matcher struct {
	exact    map[string]*node // "host" or "host:port", lower case
	wildcard map[string]*node // the suffix after "*."
	anyHost  *node

	// Slabs the build carves nodes, entries and children from: a table of
	// 10 000 routes has tens of thousands of each, and one allocation per
	// slab instead of one per object halves the build's time.
	nodeSlab  []node
	entrySlab []entry
	childSlab []child
	// crowded are the nodes given more than one entry, to sort at the end.
	crowded []*node
}

const slabSize = 512

func newMatcher() *matcher {
	return &matcher{
		exact:    make(map[string]*node),
		wildcard: make(map[string]*node),
	}
}

func (m *matcher) newNode() *node {
	if len(m.nodeSlab) == cap(m.nodeSlab) {
		m.nodeSlab = make([]node, 0, slabSize)
	}
	m.nodeSlab = append(m.nodeSlab, node{maxDepth: -1})
	return &m.nodeSlab[len(m.nodeSlab)-1]
}

// oneEntry and oneChild return a one-element slice from a slab, with no
// room to grow: a second append moves it to a slice of its own.
func (m *matcher) oneEntry(e entry) []entry {
	if len(m.entrySlab) == cap(m.entrySlab) {
		m.entrySlab = make([]entry, 0, slabSize)
	}
	m.entrySlab = append(m.entrySlab, e)
	i := len(m.entrySlab) - 1
	return m.entrySlab[i : i+1 : i+1]
}

func (m *matcher) oneChild(c child) []child {
	if len(m.childSlab) == cap(m.childSlab) {
		m.childSlab = make([]child, 0, slabSize)
	}
	m.childSlab = append(m.childSlab, c)
	i := len(m.childSlab) - 1
	return m.childSlab[i : i+1 : i+1]
}

// root returns the trie of a route host, or nil; create adds it.
func (m *matcher) root(host string, create bool) *node {
	var groups map[string]*node
	switch {
	case host == "":
		if m.anyHost == nil && create {
			m.anyHost = m.newNode()
		}
		return m.anyHost
	case strings.HasPrefix(host, "*."):
		groups, host = m.wildcard, host[2:]
	default:
		groups = m.exact
	}
	n := groups[host]
	if n == nil && create {
		n = m.newNode()
		groups[host] = n
	}
	return n
}

// path returns the node of a path shape under root, adding missing nodes,
// and raises maxDepth along the way for a route ending there.
func (m *matcher) path(root *node, segs []pathSegment) *node {
	n := root
	for _, s := range segs {
		n.maxDepth = max(n.maxDepth, len(segs))
		var next *node
		if s.param {
			if next = n.param; next == nil {
				next = m.newNode()
				n.param = next
			}
		} else if next = n.staticChild(s.literal); next == nil {
			next = m.newNode()
			m.addStatic(n, s.literal, next)
		}
		n = next
	}
	n.maxDepth = max(n.maxDepth, len(segs))
	return n
}

func (m *matcher) addStatic(n *node, segment string, c *node) {
	switch {
	case n.static != nil:
		n.static[segment] = c
	case len(n.children) == 0:
		n.children = m.oneChild(child{segment, c})
	case len(n.children) < maxListedChildren:
		n.children = append(n.children, child{segment, c})
	default:
		n.static = make(map[string]*node, 2*maxListedChildren)
		for _, ch := range n.children {
			n.static[ch.segment] = ch.node
		}
		n.children = nil
		n.static[segment] = c
	}
}

// add inserts a route unless an entry at its node already claims one of
// its methods; it returns that entry's route then.
func (m *matcher) add(c *compiledRoute) (conflict *Route) {
	n := m.path(m.root(c.route.Host, true), c.segs)
	if other := n.overlapping(c.route.ID, c.methods); other != nil {
		return other
	}
	e := entry{route: c.route, methods: c.methods}
	switch len(n.entries) {
	case 0:
		n.entries = m.oneEntry(e)
	case 1:
		m.crowded = append(m.crowded, n)
		fallthrough
	default:
		n.entries = append(n.entries, e)
	}
	return nil
}

// finish orders the entries of each node best first (rule 3 above) and
// drops what only the build needed.
func (m *matcher) finish() {
	for _, n := range m.crowded {
		slices.SortFunc(n.entries, compareEntries)
	}
	m.nodeSlab, m.entrySlab, m.childSlab, m.crowded = nil, nil, nil, nil
}

// hostBufLen holds the longest host a route can name (MaxHostLength);
// longer request hosts can only match host-less routes.
const hostBufLen = MaxHostLength + 1

func (m *matcher) match(host, method, path string) (*Route, int, bool) {
	if len(path) == 0 || path[0] != '/' {
		return nil, 0, false
	}
	bit := methodBit(method)
	best := found{depth: -1}
	if len(m.exact) > 0 || len(m.wildcard) > 0 {
		var buf [hostBufLen]byte
		if n, nameLen, ok := canonicalHost(host, &buf); ok {
			if n > nameLen {
				if root := m.exact[string(buf[:n])]; root != nil {
					if root.find(path, 0, 0, method, bit, &best); best.route != nil {
						return best.route, best.end, true
					}
				}
			}
			if root := m.exact[string(buf[:nameLen])]; root != nil {
				if root.find(path, 0, 0, method, bit, &best); best.route != nil {
					return best.route, best.end, true
				}
			}
			if len(m.wildcard) > 0 {
				// Suffixes after each dot, longest first; a wildcard
				// needs at least one label before its suffix.
				for i := 1; i < nameLen; i++ {
					if buf[i] != '.' {
						continue
					}
					if root := m.wildcard[string(buf[i+1:nameLen])]; root != nil {
						if root.find(path, 0, 0, method, bit, &best); best.route != nil {
							return best.route, best.end, true
						}
					}
				}
			}
		}
	}
	if m.anyHost != nil {
		if m.anyHost.find(path, 0, 0, method, bit, &best); best.route != nil {
			return best.route, best.end, true
		}
	}
	return nil, 0, false
}

// canonicalHost writes host into buf as the table keys hosts: lower case,
// without the trailing dot of a fully qualified name, with the port (if
// any) after a colon. It returns the length written and the length of the
// name without the port; ok is false when the host cannot name any route.
func canonicalHost(host string, buf *[hostBufLen]byte) (n, nameLen int, ok bool) {
	name, port := host, ""
	if strings.HasPrefix(host, "[") {
		end := strings.IndexByte(host, ']')
		if end < 0 {
			return 0, 0, false
		}
		name, port = host[:end+1], host[end+1:]
		if port != "" && port[0] != ':' {
			return 0, 0, false
		}
		if port != "" {
			port = port[1:]
		}
	} else if i := strings.LastIndexByte(host, ':'); i >= 0 {
		name, port = host[:i], host[i+1:]
	}
	if len(name) > 1 && name[len(name)-1] == '.' {
		name = name[:len(name)-1]
	}
	if name == "" || len(name)+1+len(port) > len(buf) {
		return 0, 0, false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	n = len(name)
	if port != "" {
		buf[n] = ':'
		n += 1 + copy(buf[n+1:], port)
	}
	return n, len(name), true
}
