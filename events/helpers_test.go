package events_test

import (
	"context"
	"time"

	"github.com/zakirkun/isekai/migrations"
)

func migrateURL(url string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return migrations.ApplyURL(ctx, url)
}
