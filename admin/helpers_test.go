package admin_test

import (
	"context"

	"github.com/zakirkun/isekai/migrations"
)

func migrateURL(ctx context.Context, url string) error {
	_, err := migrations.ApplyURL(ctx, url)
	return err
}
