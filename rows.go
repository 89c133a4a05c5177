package unified

import (
	"database/sql/driver"
	"reflect"
)

// heldRows are a node's rows that hold a Batch bulkhead token until Close.
// Every column-metadata interface is forwarded, so ColumnTypes work as on
// the node's own rows. Outside Batch mode with a bulkhead, rows are never
// wrapped.
type heldRows struct {
	driver.Rows
	release func()
}

var (
	_ driver.RowsColumnTypeDatabaseTypeName = (*heldRows)(nil)
	_ driver.RowsColumnTypeLength           = (*heldRows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*heldRows)(nil)
	_ driver.RowsColumnTypeScanType         = (*heldRows)(nil)
	_ driver.RowsColumnTypeNullable         = (*heldRows)(nil)
)

func (r *heldRows) Close() error {
	err := r.Rows.Close()
	if r.release != nil {
		r.release()
		r.release = nil
	}
	return err
}

func (r *heldRows) ColumnTypeDatabaseTypeName(i int) string {
	if x, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return x.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *heldRows) ColumnTypeLength(i int) (int64, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return x.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *heldRows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return x.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *heldRows) ColumnTypeScanType(i int) reflect.Type {
	if x, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return x.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}

func (r *heldRows) ColumnTypeNullable(i int) (bool, bool) {
	if x, ok := r.Rows.(driver.RowsColumnTypeNullable); ok {
		return x.ColumnTypeNullable(i)
	}
	return false, false
}
