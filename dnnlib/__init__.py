"""Small torch-free utilities shared by every stage (see dnnlib/util.py)."""

from .util import (TEMP_PREFIX, EasyDict, UserError, cache_dir, construct_class_by_name, format_time, full_name,
                   get_obj_by_name, is_temp_file, is_url, next_run_dir, open_url, os_error_message, progress_bar,
                   report_user_errors, user_error_message, write_bytes_atomic)

__all__ = ['TEMP_PREFIX', 'EasyDict', 'UserError', 'cache_dir', 'construct_class_by_name', 'format_time', 'full_name',
           'get_obj_by_name', 'is_temp_file', 'is_url', 'next_run_dir', 'open_url', 'os_error_message', 'progress_bar',
           'report_user_errors', 'user_error_message', 'write_bytes_atomic']
