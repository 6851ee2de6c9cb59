"""Small torch-free utilities shared by every stage (see dnnlib/util.py), and the option types of
the entry scripts (dnnlib/cli.py)."""

from .cli import MAX_BATCH, MAX_COUNT, MAX_SIDE, MAX_WEIGHT, MAX_WORKERS, SEED, Device, FiniteFloat, check_option, check_stored_option, parse_device
from .util import (JSON_READ_ERRORS, TEMP_PREFIX, EasyDict, UserError, cache_dir, check_regular_file, construct_class_by_name, exit_code, format_time,
                   full_name, get_obj_by_name, is_temp_file, is_url, naming_file, next_run_dir, open_url,
                   finite_or_none, json_text, os_error_message, progress_bar, read_cache, report_user_errors,
                   safe_line, user_error_message, warn, write_bytes_atomic, writing_cache)

__all__ = ['check_regular_file', 'MAX_BATCH', 'MAX_COUNT', 'MAX_SIDE', 'MAX_WEIGHT', 'MAX_WORKERS', 'SEED', 'JSON_READ_ERRORS', 'TEMP_PREFIX', 'Device', 'EasyDict', 'FiniteFloat', 'UserError', 'cache_dir', 'check_option',
           'check_stored_option',
           'construct_class_by_name', 'exit_code', 'format_time', 'full_name', 'get_obj_by_name', 'is_temp_file',
           'is_url', 'naming_file', 'next_run_dir', 'open_url', 'os_error_message', 'parse_device', 'progress_bar',
           'read_cache', 'report_user_errors', 'user_error_message', 'write_bytes_atomic', 'writing_cache',
           'finite_or_none', 'json_text', 'safe_line', 'warn']
