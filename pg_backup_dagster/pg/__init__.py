"""PostgreSQL plumbing: client tools, connection strings without passwords, the source database with its
connection budget, throwaway servers, managed-database profiles, the SQL scanner and small SQL helpers."""
