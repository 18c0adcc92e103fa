package main

import (
	"fmt"
	"log"
	"time"
)

// waitRun times admin writes on a 3-node cluster with and without
// ?wait=cluster (K PATCHes each, on a rotating node), and checks after each
// waited write that every node's proxy already serves it.
func waitRun(nodes []*proc, backend string, k int) {
	id := createRoute(nodes[0], "/w", backend+"/v0")
	var plain, waited []time.Duration
	stale := 0
	for i := 1; i <= 2*k; i++ {
		want := fmt.Sprintf("/v%d", i)
		wait := i%2 == 0
		url := nodes[i%len(nodes)].admin + "/api/routes/" + id
		if wait {
			url += "?wait=cluster&timeout=5s"
		}
		start := time.Now()
		status, body := post("PATCH", url, map[string]any{"target_url": backend + want})
		d := time.Since(start)
		if status != 200 {
			log.Fatalf("patch: %d %s", status, body)
		}
		if !wait {
			plain = append(plain, d)
			continue
		}
		waited = append(waited, d)
		for _, n := range nodes {
			if !probe(n.proxy+"/w", want) {
				stale++
			}
		}
	}
	fmt.Printf("admin writes on 3 nodes, %d each way (PATCH on a rotating node):\n", k)
	report("write, no wait (request -> 200)", plain)
	report("write, ?wait=cluster (request -> 200)", waited)
	fmt.Printf("  after a wait=cluster 200, proxies not yet serving the write: %d of %d probes\n", stale, 3*k)
}
