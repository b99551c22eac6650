this file is skipped: its name starts with a dot
