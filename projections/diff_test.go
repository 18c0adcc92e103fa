package projections

import (
	"encoding/json"
	"testing"
)

func TestDiffRoutes(t *testing.T) {
	t.Parallel()
	base := route(1, "/a")
	base.Methods = []string{"GET"}
	changed := base
	changed.Path, changed.Methods, changed.Enabled, changed.Timeout = "/b", nil, false, 5
	changed.Version, changed.UpdatedAt = 9, epoch.Add(99)
	renamed := base
	renamed.Name, renamed.Host = "users", "api.example.com"
	for _, tc := range []struct {
		name       string
		prev, next *Route
		want       string
	}{
		{name: "nothing to nothing", want: `[]`},
		{name: "same spec", prev: &base, next: &base, want: `[]`},
		{name: "only version and times differ", prev: &base, next: func() *Route { r := base; r.Version, r.UpdatedAt = 4, epoch.Add(7); return &r }(), want: `[]`},
		{name: "update", prev: &base, next: &changed,
			want: `[{"field":"path","from":"/a","to":"/b"},{"field":"methods","from":["GET"],"to":[]},{"field":"enabled","from":true,"to":false},{"field":"timeout","from":30,"to":5}]`},
		{name: "name and host set", prev: &base, next: &renamed,
			want: `[{"field":"name","from":"","to":"users"},{"field":"host","from":"","to":"api.example.com"}]`},
		{name: "create lists the fields the JSON carries", next: &base,
			want: `[{"field":"path","from":null,"to":"/a"},{"field":"methods","from":null,"to":["GET"]},{"field":"target_url","from":null,"to":"http://backend-1:8080/base"},{"field":"strip_path","from":null,"to":true},{"field":"priority","from":null,"to":0},{"field":"enabled","from":null,"to":true},{"field":"rate_limit","from":null,"to":0},{"field":"timeout","from":null,"to":30}]`},
		{name: "delete", prev: &renamed,
			want: `[{"field":"name","from":"users","to":null},{"field":"path","from":"/a","to":null},{"field":"methods","from":["GET"],"to":null},{"field":"host","from":"api.example.com","to":null},{"field":"target_url","from":"http://backend-1:8080/base","to":null},{"field":"strip_path","from":true,"to":null},{"field":"priority","from":0,"to":null},{"field":"enabled","from":true,"to":null},{"field":"rate_limit","from":0,"to":null},{"field":"timeout","from":30,"to":null}]`},
	} {
		got, err := json.Marshal(DiffRoutes(tc.prev, tc.next))
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != tc.want {
			t.Errorf("%s:\n got %s\nwant %s", tc.name, got, tc.want)
		}
	}
}
